"""The control plane: the admin HTTP API (``scimflow admin``) and what the CLI shares with it.

- ``control.py``: the operations (status, start/stop, restart, provision on demand, test
  connection, allow deletes, recent records) and their audit trail;
- ``provision.py``: provision on demand and its step-by-step trace;
- ``api.py``: the aiohttp routes, bearer-token auth (``auth.py``);
- ``client.py``: the same operations over HTTP, for the CLI's ``--api`` mode;
- ``main.py``: the service's entry point.
"""

from services.admin.control import Backend, ControlPlane

__all__ = ["Backend", "ControlPlane"]
