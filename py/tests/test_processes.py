"""What aiocache cannot do: callers in other processes wait. 8 processes x 8 asyncio
tasks compute a missing value once; a sync wait honours Ctrl-C."""

import collections
import json
import os
import signal
import time

import pytest

from helpers import child, line


@pytest.fixture(params=["redis", "memcached"])
def network(request):
    server = request.getfixturevalue(f"{request.param}_server")
    return request.param, server.url


def test_eight_processes_of_eight_tasks_compute_once(network, ns, tmp_path):
    processes, tasks = 8, 8
    log = tmp_path / "computed"
    log.touch()
    children = [child("stampede", network[1], ns, i, processes, tasks, log) for i in range(processes)]
    try:
        for c in children:
            assert line(c) == "ready"
        for c in children:  # all start together
            c.stdin.write("go\n")
            c.stdin.flush()
        outcomes = collections.Counter()
        for c in children:
            outcomes.update(json.loads(line(c)))
            assert c.wait(timeout=60) == 0
    finally:
        for c in children:
            c.kill()
    assert len(log.read_text().splitlines()) == 1, "computed once"
    # The 63 others waited in 8 processes and woke on the release.
    assert outcomes == {"acquired": 1, "released": processes * tasks - 1}


def test_keyboard_interrupt_ends_a_sync_wait(backend, ns):
    proc = child("sigint", backend[1], ns)
    try:
        assert line(proc) == "waiting"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        words = line(proc).split()
        elapsed = time.monotonic() - start
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    # Interrupted within a wait slice (0.1 s), nobody left waiting, the holder's lock
    # untouched.
    assert words == ["interrupted", "0", "1"]
    assert elapsed < 2.0
