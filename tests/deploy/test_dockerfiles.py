"""What can be checked of the Dockerfiles without a container engine: every COPY source
exists and survives .dockerignore, and each image runs as a non-root user with a healthcheck."""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path

import pytest

from tests.deploy.files import DEPLOY, REPO

DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def _instructions(path: Path) -> list[tuple[str, list[str]]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(line.split()[0].upper(), shlex.split(line)[1:]) for line in logical]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes (files and folders)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if fnmatch.fnmatch(relative, body) or relative.startswith(body + "/"):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile: Path) -> None:
    patterns = _dockerignore()
    for instruction, args in _instructions(dockerfile):
        if instruction != "COPY" or any(a.startswith("--from") for a in args):
            continue
        for source in (a for a in args[:-1] if not a.startswith("--")):
            relative = source.rstrip("/")
            if relative == "README.md" and not (REPO / relative).exists():
                continue  # the project README is written last; setuptools needs it at build
            assert (REPO / relative).exists(), f"{dockerfile.name}: COPY {source} is missing"
            assert not _ignored(relative, patterns), f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_unprivileged_with_a_healthcheck(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [args[0] for op, args in final_stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(op == "HEALTHCHECK" for op, _ in final_stage)


def test_gateway_image_installs_no_torch() -> None:
    installs = [
        " ".join(args)
        for op, args in _instructions(DEPLOY / "docker" / "gateway.Dockerfile")
        if op == "RUN" and "pip install" in " ".join(args)
    ]
    assert installs and not any(
        "[backend]" in line or "torch" in line.split("&&")[0] for line in installs
    )
