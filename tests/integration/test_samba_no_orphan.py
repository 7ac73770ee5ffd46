"""The test domain controller dies with the test runner that started it, even when the
runner is killed before its teardown runs (SIGKILL, or SIGTERM's default action)."""

from __future__ import annotations

import signal
import sys

import pytest

from tests.support.orphans import signal_parent
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


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_samba_dies_with_a_killed_runner(how: signal.Signals) -> None:
    samba, gone = signal_parent([sys.executable, "-c", RUNNER], how)  # no teardown runs
    assert gone, f"samba {samba} outlived the runner that started it"
