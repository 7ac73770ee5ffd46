"""The options and arguments several ``scimflow`` commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ApiOpt", "AppArg", "ByOpt", "ConfigOpt", "JsonOpt", "OptionalConfigOpt", "TokenFileOpt"]

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Provisioning config YAML.",
                                         envvar="SCIMFLOW_CONFIG")]
ApiOpt = Annotated[str | None, typer.Option(
    "--api", envvar="SCIMFLOW_ADMIN_URL", help="Admin API URL; unset: talk to Kafka directly.")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", help="File holding the admin API token (or set SCIMFLOW_ADMIN_TOKEN).")]
OptionalConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="SCIMFLOW_CONFIG", help="Provisioning config (direct mode).")]
ByOpt = Annotated[str, typer.Option(help="Who asks, for the audit trail (direct mode; default $USER).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AppArg = Annotated[str, typer.Argument(help="Application name.")]
