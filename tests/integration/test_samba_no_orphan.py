"""The test domain controller dies with the test runner that started it, even when the
runner is killed before its teardown runs (SIGKILL, or SIGTERM's default action)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.samba import samba_missing

pytestmark = pytest.mark.skipif(samba_missing() is not None or not sys.platform.startswith("linux"),
                                reason=samba_missing() or "PR_SET_PDEATHSIG is Linux's")

RUNNER = """
import time
from tests.support.samba import start_samba
with start_samba() as samba:
    print(samba.process.pid, flush=True)
    time.sleep(300)
"""


def _gone_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` is gone (or a zombie nobody reaped yet) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_samba_dies_with_a_killed_runner(how: signal.Signals) -> None:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        assert runner.stdout is not None
        samba = int(runner.stdout.readline())
        assert Path(f"/proc/{samba}").exists()
        runner.send_signal(how)  # no teardown runs
        runner.wait(10)
        assert _gone_within(samba, 5), f"samba {samba} outlived the runner that started it"
    finally:
        runner.kill()
        runner.wait()
        if runner.stdout is not None:
            runner.stdout.close()
