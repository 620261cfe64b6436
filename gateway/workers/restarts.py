"""When a crashed worker is restarted, and when crashes mean a crash loop (pure)."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class RestartPolicy:
    """Bounded restarts with backoff, shared by all workers; pure (``now`` is passed in).

    A crash now and then (an OOM kill, a bug on one rare request) costs 1/N of capacity for
    ``delay`` seconds. ``max_restarts`` crashes within ``window_s`` is a crash loop: give up.
    """

    max_restarts: int = 5
    window_s: float = 60.0
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    _crashes: collections.deque[float] = dataclasses.field(default_factory=collections.deque)

    def on_crash(self, now: float) -> float | None:
        """Seconds to wait before the restart, or None when the crash loop limit is reached."""
        while self._crashes and now - self._crashes[0] > self.window_s:
            self._crashes.popleft()
        self._crashes.append(now)
        if len(self._crashes) > self.max_restarts:
            return None
        return min(self.max_delay_s, self.base_delay_s * 2 ** (len(self._crashes) - 1))
