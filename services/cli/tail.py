"""``scimflow tail``: the activity log or the error report as records arrive, read from
Kafka (through ``services.runtime.kafka``) or from the admin API (``--api``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from schemas import ActivityRecord, ErrorRecord
from services.cli import control
from services.cli.options import ApiOpt, TokenFileOpt
from services.cli.render import fail, print_activity, print_error
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.settings import load_settings
from services.runtime.topics import Topics

__all__ = ["records", "tail"]


def tail(kind: Annotated[str, typer.Argument(help="activity or errors")],
         app: Annotated[str | None, typer.Option(help="Only this application.")] = None,
         status: Annotated[str | None, typer.Option(
             help="Only this status (activity) or error code (errors).")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
         follow: Annotated[bool, typer.Option(help="Keep waiting for new records.")] = True,
         api: ApiOpt = None, token_file: TokenFileOpt = None,
         ) -> None:
    """Print the activity log or the error report as records arrive."""
    from services.admin.control import wanted

    if kind not in ("activity", "errors"):
        raise fail(ConfigError("expected `activity` or `errors`"))
    record_type = ActivityRecord if kind == "activity" else ErrorRecord

    def show(r: Any) -> None:
        if not wanted(r, app, status):
            return
        if as_json:
            sys.stdout.write(msgspec.json.encode(r).decode() + "\n")
            sys.stdout.flush()
        elif isinstance(r, ActivityRecord):
            print_activity(r)
        else:
            print_error(r)

    try:
        if api:
            control.run(lambda: _tail_api(api, token_file, kind, record_type, app, status, follow, show))
            return
        settings = load_settings()
        if not settings.kafka_bootstrap:
            raise fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set (or give --api URL)"))
        topics = Topics(settings.topic_prefix, settings.partitions)
        topic = topics.activity if kind == "activity" else topics.errors
        for r in records(settings.kafka_bootstrap, topic, record_type, follow=follow):
            show(r)
    except KeyboardInterrupt:
        pass


def records(bootstrap: str, topic: str, kind: type[Any], *, follow: bool,
            dead: Callable[[], list[str]] | None = None, from_beginning: bool = True) -> Iterator[Any]:
    """The records of ``topic`` decoded as ``kind`` (others skipped), until the topic falls
    idle, or with ``follow`` for ever; ``dead`` names the workers that exited (checked while
    the topic is idle: a follower then stops with an error instead of waiting for ever)."""
    from services.runtime.kafka import IDLE, tail_records

    dec = msgspec.json.Decoder(kind)
    for record in tail_records(bootstrap, topic, from_beginning=from_beginning, idle_timeout=0.5):
        if record is not IDLE:
            try:
                yield dec.decode(record.value)
            except msgspec.DecodeError:
                continue
        elif not follow:
            return
        elif dead is not None and (exited := dead()):
            raise ScimflowError(f"worker(s) exited: {', '.join(exited)}; see the worker logs")


def _tail_api(api: str, token_file: Path | None, kind: str, record_type: type[Any], app: str | None,
              status: str | None, follow: bool, show: Callable[[Any], None]) -> None:
    """``tail`` over the admin API: the recent records, then (``--follow``) new ones every second."""
    seen: set[str] = set()
    with control.backend(api, token_file, None, "") as plane:
        while True:
            for raw in plane.records(kind, app=app, status=status, limit=1000):
                record = msgspec.convert(raw, record_type, strict=False)
                if record.id not in seen:
                    seen.add(record.id)
                    show(record)
            if not follow:
                return
            time.sleep(1.0)
