"""The missing-tool rule: skip locally, fail when TAILGATE_REQUIRE_TOOLS=1."""

from __future__ import annotations

import pytest

from tests import tools

ABSENT = "tailgate-no-such-tool"


def test_missing_tool_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tools.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=ABSENT):
        tools.require_tool(ABSENT)


def test_missing_tool_fails_when_tools_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tools.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=tools.REQUIRE_ENV):
        tools.require_tool(ABSENT)


def test_present_tool_returns_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tools.REQUIRE_ENV, "1")
    assert tools.require_tool("sh").endswith("/sh")
