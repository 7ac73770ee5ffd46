"""faust's monitor kept to what faust reads back: no per-record bookkeeping."""

from __future__ import annotations

import faust
from faust.types import TP

from services.runtime.sensors import LeanMonitor


def test_a_stream_event_stamps_its_partition_and_nothing_else_is_kept() -> None:
    monitor = LeanMonitor()
    tp = TP("t", 3)
    monitor.on_message_in(tp, 7, object())
    monitor.on_stream_event_in(tp, 7, object(), object())
    monitor.on_stream_event_out(tp, 7, object(), object(), None)
    monitor.on_message_out(tp, 7, object())
    monitor.on_send_initiated(object(), "t", object(), 1, 2)
    monitor.on_send_completed(object(), None, object())
    # faust's consumer reads this to warn about a partition no stream takes records from.
    assert tp in monitor.stream_inbound_time
    assert monitor.messages_received_total == 0
    assert monitor.events_total == 0
    assert monitor.messages_sent == 0
    assert not monitor.events_runtime


def test_an_app_given_it_uses_it() -> None:
    app = faust.App("lean-monitor-test", Monitor=LeanMonitor)
    assert isinstance(app.monitor, LeanMonitor)
