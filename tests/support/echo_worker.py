"""A minimal faust worker built by the real :func:`services.runtime.kafka.faust_app`, for
tests of how workers connect (TLS, SASL): its agent copies each record of ``echo-in`` to
``echo-out`` (faust's consumer group and producer), and a task follows ``echo-in`` with
:func:`follow_topic` (aiokafka, the process's security) and prints what it sees.

Run as ``python -m tests.support.echo_worker``, configured by ``SCIMFLOW_*`` like a worker.
"""

from __future__ import annotations

from typing import Any

from services.runtime.kafka import faust_app, follow_topic, raw_topic, run_worker
from services.runtime.settings import load_settings

IN, OUT = "echo-in", "echo-out"


def build() -> Any:
    settings = load_settings()
    assert settings.kafka_bootstrap, "SCIMFLOW_KAFKA_BOOTSTRAP is not set"
    app = faust_app("echo", settings, settings.kafka_bootstrap)
    source, sink = raw_topic(app, IN), raw_topic(app, OUT)

    @app.agent(source)  # type: ignore[untyped-decorator]
    async def echo(stream: Any) -> None:
        async for value in stream:
            await sink.send(value=value)

    @app.task  # type: ignore[untyped-decorator]
    async def follow() -> None:
        async for value in follow_topic(settings.kafka_bootstrap or "", IN):
            print(f"followed {value.decode()}", flush=True)

    return app


if __name__ == "__main__":
    run_worker(build(), shutdown_timeout=5.0)
