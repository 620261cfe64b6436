"""The master's restart policy: backoff per recent crash, a crash loop gives up."""

from __future__ import annotations

from gateway.workers import RestartPolicy


def test_backoff_doubles_with_each_recent_crash_up_to_the_cap() -> None:
    policy = RestartPolicy(max_restarts=10, window_s=60.0, base_delay_s=0.1, max_delay_s=0.5)
    delays = [policy.on_crash(now=float(i)) for i in range(5)]
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_more_than_max_restarts_within_the_window_is_a_crash_loop() -> None:
    policy = RestartPolicy(max_restarts=3, window_s=10.0)
    assert all(policy.on_crash(now=t) is not None for t in (0.0, 1.0, 2.0))
    assert policy.on_crash(now=3.0) is None


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(max_restarts=2, window_s=10.0, base_delay_s=0.1)
    assert policy.on_crash(now=0.0) == 0.1
    assert policy.on_crash(now=5.0) == 0.2
    # the crash at 0 s has aged out: two in the window, not three, and the backoff restarts
    assert policy.on_crash(now=10.5) == 0.2
    assert policy.on_crash(now=20.6) == 0.1
