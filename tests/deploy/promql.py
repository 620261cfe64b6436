"""Just enough PromQL reading to list the metric names a query uses, and match them to the
families a ``/metrics`` page declares. Not a parser: it removes what cannot be a metric name
(strings, label matchers, ranges, grouping clauses, numbers, keywords, function calls)."""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip
# Suffixes the text format adds to a family's samples (counter, histogram, summary).
SAMPLE_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects, e.g. ``rate(a_total[5m]) / b`` -> {a_total, b}."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def families(exposition: str) -> set[str]:
    """Family names a Prometheus text page declares in its ``# HELP`` / ``# TYPE`` lines."""
    found: set[str] = set()
    for line in exposition.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
            found.add(parts[2])
    return found


def is_exported(name: str, exported: set[str]) -> bool:
    """Whether ``name`` is a declared family or a sample of one (``x_bucket`` of ``x``)."""
    if name in exported:
        return True
    return any(name.endswith(s) and name[: -len(s)] in exported for s in SAMPLE_SUFFIXES)
