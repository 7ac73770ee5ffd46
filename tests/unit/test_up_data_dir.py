"""`scimflow up`'s data dir: one `up` at a time holds it, `--fresh` wipes it, and a
directory that is not one is neither used nor wiped (services.devstack.supervisor)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.supervisor import DataDirError, claim_data_dir, default_data_dir

# Another process that claims the dir, says so, and holds it until it is killed.
_HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from services.devstack.supervisor import claim_data_dir\n"
    "with claim_data_dir(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "held\n"
            yield proc
        finally:
            proc.kill()


def test_a_second_up_is_refused_naming_the_dir_and_the_holder(
        tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(DataDirError) as refused, claim_data_dir(tmp_path):
        pytest.fail("claimed a data dir that another process holds")
    assert str(tmp_path) in str(refused.value)
    assert f"(pid {holder.pid})" in str(refused.value)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path,
                                              holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up code of its own runs
    holder.wait(timeout=10)
    with claim_data_dir(tmp_path):
        assert (tmp_path / "up.lock").read_text().strip() == str(os.getpid())


def test_state_is_kept_until_fresh_wipes_it(tmp_path: Path) -> None:
    with claim_data_dir(tmp_path) as resumed:
        assert not resumed
        (tmp_path / "kafka" / "data").mkdir(parents=True)
        (tmp_path / "demo-token").write_text("t")
    with claim_data_dir(tmp_path) as resumed:
        assert resumed
        assert (tmp_path / "kafka" / "data").is_dir()
    with claim_data_dir(tmp_path, fresh=True) as resumed:
        assert not resumed
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scimflow-data-dir.txt", "up.lock"]


def test_a_directory_that_is_not_a_data_dir_is_neither_used_nor_wiped(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for fresh in (False, True):
        with pytest.raises(DataDirError, match="is not a scimflow data dir"), \
                claim_data_dir(tmp_path, fresh=fresh):
            pytest.fail("used a directory that is not a data dir")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "up.lock").exists()


def test_the_default_data_dir_is_beside_the_config(tmp_path: Path) -> None:
    assert default_data_dir(tmp_path / "demo.yaml") == tmp_path.resolve() / ".scimflow"
