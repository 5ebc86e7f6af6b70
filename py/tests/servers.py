"""Real redis-server and memcached processes, started in a temporary directory and
stopped by `stop()` (their logs are shown when they fail to start). Used by the
test fixtures (conftest.py) and the benchmark (bench/bench.py).

Redis listens on a unix socket (aiolock's tests use it) and on a loopback port
(aiocache's RedisCache only speaks TCP); memcached on a loopback port (aiocache's
MemcachedCache needs TCP too). A port is picked free and, if the server still fails
to bind it, another one is tried. The binaries come from $REDIS_SERVER / $MEMCACHED,
else from PATH.
"""

import os
import shutil
import socket
import subprocess
import time

import redis as redis_py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} not found (install it, or set ${env})")
    return path


class Server:
    """A server process; `stop()` kills it."""

    def __init__(self, name, argv, log, ready, capture=False):
        self.name, self.log = name, log
        out = open(log, "w") if capture else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if capture:
                out.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start ({self.proc.returncode}): {self.log_text()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not come up in 10 s: {self.log_text()}")
            time.sleep(0.01)  # polling for readiness, not ordering

    def log_text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RedisServer:
    def __init__(self, tmp):
        self.socket = os.path.join(tmp, "redis.sock")
        log = os.path.join(tmp, "redis.log")
        last = None
        for _ in range(5):
            self.port = _free_port()
            argv = [
                _binary("REDIS_SERVER", "redis-server"),
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", tmp, "--logfile", log,
            ]
            try:
                self.server = Server("redis-server", argv, log, self._ping)
                break
            except RuntimeError as e:
                last = e
        else:
            raise last
        self.client = redis_py.Redis(unix_socket_path=self.socket)

    def stop(self):
        self.server.stop()

    def _ping(self):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(self.socket)
            s.sendall(b"PING\r\n")
            return s.recv(100).startswith(b"+PONG")

    @property
    def url(self) -> str:
        return f"redis+unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def subscribers(self, lock_key: bytes) -> int:
        """How many connections are subscribed to the release channel(s) of a lock
        key, whatever the channel's exact name (it contains the lock key)."""
        pattern = b"*" + lock_key + b"*"
        channels = self.client.pubsub_channels(pattern)
        if not channels:
            return 0
        return sum(n for _, n in self.client.pubsub_numsub(*channels))


class MemcachedServer:
    def __init__(self, tmp):
        log = os.path.join(tmp, "memcached.log")
        last = None
        for _ in range(5):
            self.port = _free_port()
            argv = [
                _binary("MEMCACHED", "memcached"),
                "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64", "-t", "2", "-v",
                *(["-u", "root"] if os.geteuid() == 0 else []),
            ]
            try:
                self.server = Server("memcached", argv, log, self._version, capture=True)
                break
            except RuntimeError as e:
                last = e
        else:
            raise last

    def _version(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"version\r\n")
            return s.recv(100).startswith(b"VERSION")

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    def stop(self):
        self.server.stop()


