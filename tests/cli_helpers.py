"""Running the real commands as a user does, for the tests of every command-line tool."""
from __future__ import annotations

import subprocess
import sys


def one_line_error(argv: list[str], code: int = 2, timeout: float = 300, env: dict | None = None) -> str:
    """Run `python ARGV` (this interpreter: the venv's); assert it failed with `code` and one line on stderr, no
    traceback; return the line."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    err = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(err.splitlines()) == 1, done.stderr
    return err
