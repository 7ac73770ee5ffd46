"""faust's monitor, kept to what faust itself reads.

faust calls its sensors around every record (read, handed to a stream, done with, acked)
and every send and table access; its default :class:`~faust.sensors.Monitor` keeps counts,
rates and latency samples on each call for its web views, which scimflow does not serve
(``web_enabled=False``): its metrics are its own (:mod:`services.runtime.metrics`). Per
record that was several microseconds in each worker, a few per cent of an unchanged full
scan's CPU. :class:`LeanMonitor` keeps the one figure faust reads back, when each partition
last handed a stream a record (its "stream has not started processing" check), and
ignores the rest.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors import Monitor

__all__ = ["LeanMonitor"]


class LeanMonitor(Monitor):
    """faust's monitor without the per-record bookkeeping nothing reads."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()  # faust's consumer checks this

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> None:
        pass

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass
