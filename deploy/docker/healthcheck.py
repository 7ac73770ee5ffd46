"""The image's HEALTHCHECK: exit 0 when this container's scimflow process answers HTTP.

A worker serves ``/healthz`` (its event loop answers) on ``SCIMFLOW_METRICS_PORT``; the
admin API serves ``/healthz`` on ``SCIMFLOW_ADMIN_PORT``. Either answering 200 on loopback
means healthy. Standard library only: the runtime image has no curl, and this must not
import scimflow (a broken install should fail the check, not the checker).
``SCIMFLOW_HEALTHCHECK_PATH`` overrides the worker's path (e.g. ``/readyz``).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 4.0


def _urls(env: dict[str, str]) -> list[str]:
    urls = []
    metrics_port = env.get("SCIMFLOW_METRICS_PORT", "0")
    if metrics_port not in {"", "0"}:
        path = env.get("SCIMFLOW_HEALTHCHECK_PATH", "/healthz")
        urls.append(f"http://127.0.0.1:{metrics_port}{path}")
    urls.append(f"http://127.0.0.1:{env.get('SCIMFLOW_ADMIN_PORT', '8088')}/healthz")
    return urls


def healthy(env: dict[str, str]) -> bool:
    """True when any of the process's HTTP endpoints answers 200."""
    for url in _urls(env):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 - loopback http only
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            continue
    return False


if __name__ == "__main__":
    sys.exit(0 if healthy(dict(os.environ)) else 1)
