"""The real clstream-server as a child process on a loopback port, for the demo and the tests.

It runs `python -m server.main` with the same interpreter and the same code this process imports
(the folders holding `server`, `cl_engine` and `clstream_proto` lead its PYTHONPATH, so a
checkout's code wins over an installed copy), binds port 0 unless told otherwise, and reports the
address it printed: `clstream-server listening on HOST:PORT metrics HOST:PORT`. Its log (stderr)
goes to a file. `stop()` is the graceful path (SIGTERM: drain, final checkpoint, exit 0);
`kill()` is SIGKILL, for crash tests.
"""
from __future__ import annotations

import importlib.util
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

READY_PREFIX = "clstream-server listening on "


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for restarting a server on the same address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def package_roots(*names: str) -> list[str]:
    """The folders from which this process imports each package, ordered as on this process's
    sys.path, so that a child process with them leading its PYTHONPATH imports the same code."""
    roots: list[str] = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"package {name!r} cannot be imported here; install clstream (pip install -e .) "
                               "or run from the repository root")
        root = str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)
        if root not in roots:
            roots.append(root)
    order = {str(Path(p or ".").resolve()): i for i, p in reversed(list(enumerate(sys.path)))}
    return sorted(roots, key=lambda r: order.get(r, len(order)))


def parse_ready_line(line: str) -> tuple[str, str | None]:
    """(grpc HOST:PORT, metrics HOST:PORT or None) from the server's ready line."""
    rest = line.strip()[len(READY_PREFIX):]
    target, _, metrics = rest.partition(" metrics ")
    return target.strip(), (metrics.strip() or None)


class LocalServer:
    """`with LocalServer(["--strategy", "gem"], log_path="server.log") as s: Client(s.target)`"""

    def __init__(self, args: Sequence[str] = (), *, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0,
                 threads: int | None = 1, log_path: str | Path | None = None, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, python: str = sys.executable):
        self.args = [str(a) for a in args]
        self.host, self.port, self.metrics_port = host, port, metrics_port
        self.threads = threads
        self.log_path = Path(log_path).resolve() if log_path else None
        self.cwd = Path(cwd).resolve() if cwd else None
        self.env = env
        self.python = python
        self.process: subprocess.Popen | None = None
        self.target: str | None = None
        self.metrics_address: str | None = None
        self._lines: queue.Queue = queue.Queue()

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.metrics_address}/metrics" if self.metrics_address else None

    def command(self) -> list[str]:
        return [self.python, "-m", "server.main", "--host", self.host, "--port", str(self.port),
                "--metrics-host", self.host, "--metrics-port", str(self.metrics_port), *self.args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        roots = package_roots("server", "cl_engine", "clstream_proto")
        env["PYTHONPATH"] = os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        if self.threads:  # torch reads these at start; small models are fastest on one thread
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def start(self, timeout: float = 180.0) -> "LocalServer":
        """Launch and wait until it serves; RuntimeError (with the end of its log) if it does not."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> "LocalServer":
        """Start the process without waiting (do other work while it imports torch, then wait_ready)."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")
        else:
            log = subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                            stdin=subprocess.DEVNULL, env=self.environment(), cwd=self.cwd,
                                            text=True, bufsize=1)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        threading.Thread(target=self._drain, name="clstream-server-stdout", daemon=True).start()
        return self

    def wait_ready(self, timeout: float = 180.0) -> "LocalServer":
        """Wait for the ready line and note the addresses it gives."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"clstream-server did not report ready within {timeout:g}s{self._log_tail()}")
            if line is None:
                code = self.process.wait()
                raise RuntimeError(f"clstream-server exited with code {code} before serving{self._log_tail()}")
            if line.startswith(READY_PREFIX):
                self.target, self.metrics_address = parse_ready_line(line)
                return self

    def _drain(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; its log ({self.log_path}) ends:\n" + "\n".join(tail)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait: the server drains, checkpoints and exits 0. SIGKILL if it does not."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the crash that checkpoints exist for."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LocalServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
