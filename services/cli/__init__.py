"""The ``scimflow`` command line: thin wiring over the services and the runtime.

The commands, grouped by who uses them:

- :mod:`~services.cli.workers`: the deployment's (``ingest``, ``mapper``, ``writer``, ``admin``);
- :mod:`~services.cli.up`: trying it on one machine (``up``: the whole pipeline, dev stack);
- :mod:`~services.cli.config_tools`: the config author's (``validate``, ``expr``, ``test-connection``);
- :mod:`~services.cli.control`: the operator's (``status``, ``stop``, ``start``, ``restart``,
  ``allow-deletes``, ``provision``);
- :mod:`~services.cli.apps`: applications as data (``apply``, ``get``, ``history``, ``rollback``,
  ``assign``, ``unassign``);
- :mod:`~services.cli.tail`: anyone watching (``tail activity|errors``).

:mod:`~services.cli.render` prints for all of them. Commands import what they run lazily,
so ``validate`` and ``expr`` start fast.
"""

from __future__ import annotations

import typer

from services.cli import apps, config_tools, control, tail, up, workers

__all__ = ["cli", "main"]

cli = typer.Typer(name="scimflow", no_args_is_help=True, add_completion=False,
                  help="Kafka-based automatic user provisioning into SCIM 2.0 apps.")

# The command tree, in the order `scimflow --help` lists it.
cli.command()(config_tools.validate)
cli.command()(config_tools.expr)
cli.command()(workers.ingest)
cli.command()(workers.mapper)
cli.command()(workers.writer)
cli.command()(up.up)
cli.command()(tail.tail)
cli.command()(control.status)
cli.command()(control.stop)
cli.command()(control.start)
cli.command("allow-deletes")(control.allow_deletes)
cli.command()(control.restart)
cli.command()(control.provision)
cli.command("test-connection")(config_tools.connection_test)
cli.command()(workers.admin)
cli.command()(apps.apply)
cli.add_typer(apps.get)
cli.command()(apps.history)
cli.command()(apps.rollback)
cli.command()(apps.assign)
cli.command()(apps.unassign)


def main() -> None:
    cli()
