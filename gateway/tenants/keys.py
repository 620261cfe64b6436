"""API keys: matched by their SHA-256 (the config never holds a key), and what goes upstream.

The keys file is YAML ``{tenant: [sha256, ...]}``. :class:`KeysFile` rereads it when its
modification time changes; a file that fails to parse keeps the last good set (and logs), so a
half-written edit never locks every client out.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import yaml

log = logging.getLogger("tailgate")

BEARER = "bearer "


def key_hash(key: str) -> str:
    """The hex SHA-256 of an API key, as the config stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, else None."""
    if not authorization or authorization[: len(BEARER)].lower() != BEARER:
        return None
    token = authorization[len(BEARER) :].strip()
    return token or None


def upstream_authorization(
    client_value: str | None, forward_client_key: bool, backend_key: str | None
) -> str | None:
    """The ``Authorization`` to send a backend: its own key if it has one, else the client's
    only where configured (a tenant's key is a credential for tailgate, not for the backend)."""
    if backend_key is not None:
        return f"Bearer {backend_key}"
    return client_value if forward_client_key else None


def parse_keys_file(text: str) -> dict[str, str]:
    """``{sha256: tenant}`` from the file's ``{tenant: [sha256, ...]}``; ValueError if malformed."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("expected a mapping of tenant name to a list of SHA-256 hashes")
    out: dict[str, str] = {}
    for tenant, hashes in data.items():
        if not isinstance(hashes, list):
            raise ValueError(f"{tenant}: expected a list of SHA-256 hashes")
        for item in hashes:
            digest = str(item).strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{tenant}: {item!r} is not a hex SHA-256 hash")
            out[digest] = str(tenant)
    return out


class KeysFile:
    """A watched keys file: :meth:`reload_if_changed` is called by a background task."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.hashes: dict[str, str] = {}
        self._mtime_ns: int | None = None
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Reread the file if it changed; True when a new set was taken."""
        try:
            mtime_ns = os.stat(self.path).st_mtime_ns
        except OSError as exc:
            if self._mtime_ns is not None or not self.hashes:
                log.warning(
                    "api keys file %s: %s (keeping %d keys)",
                    self.path,
                    exc.strerror,
                    len(self.hashes),
                )
            self._mtime_ns = None
            return False
        if mtime_ns == self._mtime_ns:
            return False
        self._mtime_ns = mtime_ns
        try:
            self.hashes = parse_keys_file(self.path.read_text("utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.warning(
                "api keys file %s is invalid, keeping the last good one: %s", self.path, exc
            )
            return False
        log.info("api keys file %s: %d keys", self.path, len(self.hashes))
        return True
