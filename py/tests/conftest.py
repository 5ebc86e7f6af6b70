"""Fixtures: the servers of servers.py, one of each for the session."""

import tempfile
import uuid

import pytest

from servers import MemcachedServer, RedisServer


@pytest.fixture(scope="session")
def tmpdir_session():
    with tempfile.TemporaryDirectory(prefix="aiolock-py-") as tmp:
        yield tmp


@pytest.fixture(scope="session")
def redis_server(tmpdir_session):
    server = RedisServer(tmpdir_session)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def memcached_server(tmpdir_session):
    server = MemcachedServer(tmpdir_session)
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis", "memcached"])
def backend(request):
    """The name and URL of each backend, in turn."""
    if request.param == "memory":
        return "memory", "memory://"
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_server").url
    return "memcached", request.getfixturevalue("memcached_server").url


@pytest.fixture
def ns():
    """A namespace of this test's own (no flush between tests)."""
    return f"t{uuid.uuid4().hex[:12]}:"
