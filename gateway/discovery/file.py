"""``discovery: {type: file}``: a YAML or JSON list of backends (``[{url, name, weight,
group}]``), re-read when its contents change; an invalid file is logged and the last good set
keeps serving."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import yaml

from gateway.config.model import BackendConfig, DiscoveryConfig
from gateway.config.schema import ConfigError, Problem, load
from gateway.fleet import BackendSpec

log = logging.getLogger("tailgate.discovery")


def parse_backend_file(text: str, group: str) -> list[BackendSpec]:
    """Backends from a discovery file; raises :class:`ConfigError` naming each bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("<file>", f"not valid YAML/JSON: {exc}")]) from None
    if isinstance(data, dict) and "backends" in data:
        data = data["backends"]
    if not isinstance(data, list):
        raise ConfigError([Problem("<file>", "expected a list of backends")])
    problems: list[Problem] = []
    specs: list[BackendSpec] = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"url": item}
        backend = load(BackendConfig, item, f"backends[{i}]", problems)
        if backend is not None:
            specs.append(
                BackendSpec(
                    backend.display_name,
                    backend.url,
                    backend.weight,
                    backend.group if "group" in item else group,
                    configured_name=backend.name is not None,
                )
            )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        problems.append(Problem("<file>", "backend names (or addresses) must be unique"))
    if problems:
        raise ConfigError(problems)
    return specs


class FileSource:
    """Watches ``discovery.path`` by the digest of its contents."""

    def __init__(self, config: DiscoveryConfig) -> None:
        assert config.path is not None  # the config requires it for this type
        self.path = config.path
        self.group = config.group
        self._digest: str | None = None

    async def look(self) -> list[BackendSpec] | None:
        try:
            raw = Path(self.path).read_bytes()
        except OSError as exc:
            log.warning("cannot read discovery file %s: %s", self.path, exc.strerror)
            return None
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            return parse_backend_file(raw.decode("utf-8", "replace"), self.group)
        except ConfigError as exc:
            log.error("discovery file %s rejected; keeping the last set:\n%s", self.path, exc)
            return None
