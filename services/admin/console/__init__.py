"""The web console: the provisioning pane of every app, in a browser (``/console`` on the
admin service), server-rendered on top of the control plane.

- ``mount.py``: :func:`mount_console` (routes, the console's session middleware);
- ``session.py``: the login cookie and CSRF tokens;
- ``render.py``: shared state and the Jinja2 pages (autoescaped);
- ``app_pages.py``: login, Applications, the Provisioning pane and its actions, provision on demand;
- ``report_pages.py``: the Activity and Error reports and their records;
- ``assignment_pages.py``: adding and removing an app's assigned users and groups;
- ``mapping_pages.py``: an app's mappings: attribute and object mapping edits, Test on one object;
- ``templates/``, ``static/`` (htmx 2.0.4 from npm ``htmx.org``, served from here).
"""

from services.admin.console.mount import mount_console

__all__ = ["mount_console"]
