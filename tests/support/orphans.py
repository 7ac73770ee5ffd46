"""Whether a child process dies with the parent that started it, however the parent ends.

The tests run a parent script that starts a child (through the code under test), prints
the child's pid and sleeps; they signal the parent (SIGKILL, or SIGTERM's default action:
no cleanup runs either way) and look whether the child is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["alive", "gone_within", "signal_parent"]

ROOT = Path(__file__).parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose (nobody reaped it yet).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(") ", 1)[1][0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def signal_parent(argv: list[str], how: signal.Signals) -> tuple[int, bool]:
    """Start the parent ``argv`` (from the repository root), read its child's pid, send the
    parent ``how`` and wait for it: (the child's pid, whether it was gone within 5 s)."""
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child), f"child {child} was not running before its parent was signalled"
        parent.send_signal(how)
        parent.wait(10)
        return child, gone_within(child, 5)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
