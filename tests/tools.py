"""One rule for tests that need an external command-line tool.

Run locally without the tool, such a test skips and says what to install. In CI, which sets
``TAILGATE_REQUIRE_TOOLS=1`` and installs every tool, a missing tool fails the test instead,
so a broken CI image can never turn a check into a silent skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REQUIRE_ENV = "TAILGATE_REQUIRE_TOOLS"

# How to get each tool the test suites use; shown in the skip or failure message.
INSTALL_HINTS: dict[str, str] = {
    "docker-compose": "apt-get install -y docker-compose",
    "promtool": "apt-get install -y prometheus (Debian's package ships promtool)",
    "kubernetes-validate": "pip install kubernetes-validate",
    "prometheus": "apt-get install -y prometheus",
    "dnsmasq": "apt-get install -y dnsmasq",
    "redis-server": "apt-get install -y redis-server",
}


def tools_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "1"


def find_tool(name: str) -> str | None:
    """The tool's path: on PATH, or installed beside this Python (a virtualenv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def require_tool(name: str) -> str:
    """The path of tool ``name``; skip the test without it, or fail when tools are required."""
    path = find_tool(name)
    if path is not None:
        return path
    hint = INSTALL_HINTS.get(name)
    message = f"{name} is not installed" + (f" (install: {hint})" if hint else "")
    if tools_required():
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes this a failure", pytrace=False)
    pytest.skip(message)
