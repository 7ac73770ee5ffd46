"""A headless worker must not leave the root logger at DEBUG (faust's spinner does that)."""

from __future__ import annotations

import logging
from typing import Any

import faust
import pytest

from services.runtime import kafka


def test_run_worker_keeps_the_root_logger_at_the_asked_level(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_execute(self: Any) -> None:
        self._setup_logging()  # what faust's Worker does first when it starts
        seen["root"] = logging.getLogger().level
        seen["spinner"] = self.spinner

    monkeypatch.setattr(faust.Worker, "execute_from_commandline", fake_execute)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        app = faust.App("t-logging", broker="kafka://127.0.0.1:9", web_enabled=False)
        kafka.run_worker(app, loglevel="warning")
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
    assert seen["spinner"] is None
    assert seen["root"] == logging.WARNING, logging.getLevelName(seen["root"])
