"""The logging set-up of every tailgate process: records written by a thread, in order,
flushed when the queue runs dry (so a line shows at once when traffic is light)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from gateway.process import setup_logging
    setup_logging("info", tag=" w1")
    access = logging.getLogger("tailgate.access")
    access.info('{"id":"first"}')
    sys.stdin.readline()  # idle: the line above must already be out
    for n in range(500):
        access.info('{"id":"r%d"}' % n)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tailgate").exception("upstream %s broke", "b-1")
    """
)


def test_access_lines_and_diagnostics_reach_their_streams_in_order() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)  # bounded: no hang if unflushed
        assert ready, "the first line was not flushed while the process idled"
        assert proc.stdout.readline() == '{"id":"first"}\n'
        rest, errors = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, errors
    assert rest.splitlines() == [f'{{"id":"r{n}"}}' for n in range(500)]
    assert "ERROR tailgate w1: upstream b-1 broke" in errors
    assert "ValueError: boom" in errors


ENTRY_SCRIPT = textwrap.dedent(
    """
    import logging
    from gateway.access_log import AccessEntry, AccessLog
    from gateway.process import setup_logging
    setup_logging("info")
    log = AccessLog()
    for n in range(300):
        log.write(AccessEntry(f"r{n}", "POST", "/v1/x", "default", "b-1", 200, 1.5, 1, "-", None,
                              "too_deep" if n == 7 else None, None))
    logging.getLogger("tailgate.access").info('{"id":"plain"}')
    """
)


def test_access_entries_are_written_as_json_lines_in_order_off_the_loop() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ENTRY_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 301 and lines[-1] == '{"id":"plain"}'
    assert lines[0] == (
        '{"id":"r0","method":"POST","path":"/v1/x","route":"default","backend":"b-1",'
        '"status":200,"latency_ms":1.5,"tries":1,"trace_id":"-","error":null}'
    )
    assert [json.loads(line)["id"] for line in lines[:300]] == [f"r{n}" for n in range(300)]
    assert json.loads(lines[7])["model_undecided"] == "too_deep"
