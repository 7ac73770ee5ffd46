"""Example consumer of scimflow's provisioning log (the activity topic).

    python examples/consume_activity.py --bootstrap localhost:9092 [--prefix scimflow.]
        [--app APP] [--status failure] [--from-beginning] [--max N]

Prints one line per outcome. It uses its own consumer group, so it sees every record
once and resumes where it stopped; decoding goes through the published contract
(``schemas.ActivityRecord``; consumers in other languages use
``schemas/json/provisioning.activity.schema.json``). Unknown fields are ignored, so a
newer scimflow that adds fields does not break it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator

import msgspec
from kafka import KafkaConsumer

from schemas import ActivityRecord

_decode = msgspec.json.Decoder(ActivityRecord).decode


def records(values: Iterable[bytes]) -> Iterator[ActivityRecord]:
    """Decode activity records; a value that is not one is skipped with a note on stderr."""
    for value in values:
        try:
            yield _decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            sys.stderr.write(f"skipped a record that is not an ActivityRecord: {exc}\n")


def line(r: ActivityRecord) -> str:
    changed = ", ".join(f"{p.name}: {p.old_value!r} -> {p.new_value!r}" for p in r.modified_properties)
    return (f"{r.at:%Y-%m-%dT%H:%M:%S}Z {r.app} {r.action} {r.status} "
            f"{r.source_identity or r.source_id} target={r.target_id or '-'} {changed}").rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Follow scimflow's activity topic.")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", default="scimflow.")
    parser.add_argument("--group", default="activity-example")
    parser.add_argument("--app")
    parser.add_argument("--status")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--max", type=int, default=0, help="stop after N matching records")
    parser.add_argument("--idle", type=float, default=0, help="stop after N idle seconds")
    args = parser.parse_args(argv)
    consumer = KafkaConsumer(
        f"{args.prefix}provisioning.activity", bootstrap_servers=args.bootstrap,
        group_id=args.group, auto_offset_reset="earliest" if args.from_beginning else "latest",
        consumer_timeout_ms=int(args.idle * 1000) if args.idle else float("inf"),
    )
    shown = 0
    try:
        for record in records(m.value for m in consumer):
            if (args.app and record.app != args.app) or (args.status and record.status != args.status):
                continue
            sys.stdout.write(line(record) + "\n")
            sys.stdout.flush()
            shown += 1
            if args.max and shown >= args.max:
                break
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
