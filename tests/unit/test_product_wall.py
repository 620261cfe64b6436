"""The product (gateway/, backend/) never imports or spawns its tools (loadtests/)."""

import ast
from pathlib import Path

import pytest

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
