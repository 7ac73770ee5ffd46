"""Processes the dev stack starts die with the process that started them, however it ends."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.support.orphans import signal_parent

PARENT = """
import sys, time
from pathlib import Path
from services.devstack.processes import spawn
child = spawn(["sleep", "300"], Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_spawned_child_dies_with_its_parent(tmp_path: Path, how: signal.Signals) -> None:
    child, gone = signal_parent([sys.executable, "-c", PARENT, str(tmp_path / "child.log")], how)
    assert gone, f"child {child} outlived its parent"
