"""Small helpers of the tests: polling (never sleeping to order events) and children."""

import asyncio
import os
import subprocess
import sys
import time

WORKERS = os.path.join(os.path.dirname(__file__), "workers.py")


async def wait_for(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` (sync or async) until true; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def poll(predicate, timeout=10.0, what="condition"):
    """`wait_for` for synchronous code."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def child(*args):
    """A worker process with pipes on stdin/stdout."""
    return subprocess.Popen(
        [sys.executable, WORKERS, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def line(proc):
    """The next line the child prints (it fails the test when the child died)."""
    text = proc.stdout.readline()
    if not text:
        raise AssertionError(f"the child exited ({proc.wait()}) without a line")
    return text.strip()
