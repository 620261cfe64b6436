"""The product's walls: gateway/ and backend/ never import or spawn their tools (loadtests/);
aiohttp is bounded to the major version tested; the gateway builds one HTTP client for
forwarding and one for probes and scrapes.

(That the product reads no private attribute of aiohttp is ``test_public_api_only.py``.)"""

import ast
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _names_loadtests(value: object) -> bool:
    return isinstance(value, str) and (value == "loadtests" or value.startswith("loadtests."))


def _uses_of_loadtests(path: Path) -> list[str]:
    """Imports of loadtests and string constants naming it as a module (``-m loadtests.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "loadtests"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "loadtests":
            found.append(f"from {node.module}")
        elif isinstance(node, ast.Constant) and _names_loadtests(node.value):
            found.append(repr(node.value))
    return found


@pytest.mark.parametrize("package", ["gateway", "backend"])
def test_the_product_never_reaches_into_loadtests(package: str) -> None:
    uses = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / package).rglob("*.py"))
        if (found := _uses_of_loadtests(path))
    }
    assert uses == {}


def test_aiohttp_is_bounded_to_the_major_version_tested() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (aiohttp,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "aiohttp"]
    installed = Version(version("aiohttp"))
    assert installed in aiohttp.specifier
    uppers = [Version(s.version) for s in aiohttp.specifier if s.operator == "<"]
    assert uppers == [Version(f"{installed.major + 1}")], aiohttp


def _constructions(name: str) -> list[str]:
    """Where in the gateway process ``name(...)`` is called (``x.name(...)`` included)."""
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() == "gateway/workers/supervisor.py":
            continue  # the master process: its own fetch of the workers' snapshots
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize(
    "client",
    [
        "UpstreamClient",  # forwarding: the pooled upstream client of gateway/upstream.py
        "ClientSession",  # active health checks and backend-metrics scrapes
    ],
)
def test_the_gateway_builds_one_client_for_each_path(client: str) -> None:
    assert len(_constructions(client)) == 1, _constructions(client)
