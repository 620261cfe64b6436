"""The README's module map names every module of the product, so a newcomer can find each one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _map_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| module | job |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _missing() -> list[str]:
    rows = _map_rows()
    named = {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}
    missing = []
    for package in ("gateway", "backend"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.name in {"__init__.py", "__main__.py"} and path.parent.name in {
                "gateway",
                "backend",
            }:
                continue
            if rel in named:
                continue
            folder = path.parent.relative_to(ROOT).as_posix() + "/"
            row = next((r for r in rows if f"`{folder}`" in r.split("|")[1]), None)
            # a sub-package's row names its modules by stem; __init__ is the package itself
            if row is not None and (path.name.startswith("__") or f"`{path.stem}`" in row):
                continue
            missing.append(rel)
    return missing


def test_every_module_is_in_the_readme_module_map() -> None:
    missing = _missing()
    assert not missing, f"add these to the README's module map: {missing}"
