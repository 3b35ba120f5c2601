"""A real redis-server for the broker tests, on a free loopback port with its data in a tmp folder.

The binary is Debian's, unpacked into .tools/redis by `make test` (tests/tools/debian_tool.sh: not
installed, nothing outside the folder), with the libraries it links that a fresh machine lacks beside
it; a redis-server on PATH serves too. Missing: a failure under CI=true (the broker tests must run
there), a reported skip elsewhere, as tests/monitoring treat Prometheus.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from client.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / ".tools" / "redis"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INSTALL_HINT = ("`make test` unpacks Debian's `redis-server` (with redis-tools, liblzf1, libjemalloc2) into "
                ".tools/redis where apt-get exists; elsewhere put redis-server on PATH")


def redis_server_command() -> tuple[str, dict[str, str]]:
    """(path of redis-server, the environment to run it in). Missing: fail in CI, skip elsewhere."""
    env = dict(os.environ)
    local = LOCAL / "usr" / "bin" / "redis-server"
    if local.exists():
        libs = [str(p) for p in (LOCAL / "usr" / "lib").glob("*-linux-gnu")] + [str(LOCAL / "usr" / "lib")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH")
                                                         else []))
        return str(local), env
    path = shutil.which("redis-server")
    if path is None:
        message = f"`redis-server` is not installed: {INSTALL_HINT}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the broker tests must run, not skip)")
        pytest.skip(message)
    return path, env


class RedisServer:
    """redis-server on 127.0.0.1:<free port>, its files (dump, log) in `directory`; `stop()` ends it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        import redis

        binary, env = redis_server_command()
        # No config file: every setting on the command line; appendonly so a restart keeps the stream.
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"), "--appendonly", "yes", "--save", "",
                "--protected-mode", "yes"]
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: "
                                   f"{self.process.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as r:
                    if r.ping():
                        return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout:g}s")

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
