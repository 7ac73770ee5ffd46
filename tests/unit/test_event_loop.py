"""SCIMFLOW_EVENT_LOOP: the workers run on uvloop unless told to use asyncio's own loop."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.runtime.errors import ConfigError
from services.runtime.settings import load_settings

_PROBE = """
import asyncio, sys
from services.runtime.kafka import use_event_loop
use_event_loop(sys.argv[1])
loop = asyncio.new_event_loop()
print(type(loop).__module__)
"""


def _loop_module(name: str) -> str:
    # A process of its own: the choice sets the interpreter's event-loop policy.
    done = subprocess.run([sys.executable, "-c", _PROBE, name], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.strip()


def test_uvloop_is_the_default_and_runs_the_workers_on_uvloop() -> None:
    assert load_settings().event_loop == "uvloop"
    assert _loop_module("uvloop") == "uvloop"


def test_asyncio_keeps_the_standard_loop() -> None:
    assert _loop_module("asyncio").startswith("asyncio")


def test_an_unknown_loop_is_a_clear_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIMFLOW_EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match=r"SCIMFLOW_.*trio.*event_loop"):
        load_settings()
