"""Entry point of the admin service (``scimflow admin``): the admin HTTP API on
``SCIMFLOW_ADMIN_HOST:SCIMFLOW_ADMIN_PORT``, acting on the deployment's topics.

It holds no state of its own (everything is read from and written to Kafka), so any number
of replicas can run, and a restart loses nothing.

``load`` validates app definitions (``PUT /apps/{app}/config``, assignments, rollback). It
is passed in, not built here, because checking mapping expressions and scoping filters the
way ``scimflow validate`` does needs the mapper's compiler, which a service may not import
(tests/unit/test_boundaries.py); the CLI, which may import anything, hands it over, and
with it ``previewer`` and ``evaluator``, the mapper's planner run on one app's definition.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from services.admin.api import build_api
from services.admin.auth import parse_tokens
from services.admin.control import Caller, ControlPlane, Evaluator, Previewer
from services.runtime.config import LoadedConfig
from services.runtime.config_store import Loader
from services.runtime.settings import Settings

__all__ = ["run_admin"]

log = structlog.get_logger("scimflow.admin")


def run_admin(settings: Settings, loaded: LoadedConfig, bootstrap: str, *, load: Loader,
              previewer: Previewer | None = None, evaluator: Evaluator | None = None) -> None:
    """Serve the admin API until SIGTERM/SIGINT. Fails at start-up without a usable token."""
    tokens = parse_tokens(settings.admin_tokens)
    plane = ControlPlane(settings, bootstrap, loaded, Caller(by="admin"), load=load, previewer=previewer,
                         evaluator=evaluator)
    app = build_api(plane, tokens)
    log.info("admin API listening", host=settings.admin_host, port=settings.admin_port,
             tokens=tokens.names)
    web.run_app(app, host=settings.admin_host, port=settings.admin_port, print=None,
                access_log=None, handle_signals=True)
