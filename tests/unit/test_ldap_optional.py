"""python-ldap is the optional `ldap` extra: without it, everything but LDAP/AD sources runs,
and an LDAP or AD source is a clear config error, not an ImportError at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WITHOUT_LDAP = """
import sys
sys.modules["ldap"] = None  # as if python-ldap were not installed
import services.ingest.main, services.cli.workers, services.mapper.main, services.writer.main
from services.ingest.worker import ldap_module
for kind in ("ldap", "ad"):
    try:
        ldap_module(kind)
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def test_the_services_import_without_python_ldap_and_ldap_sources_say_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_LDAP], capture_output=True, text=True,
                            cwd=Path(__file__).parents[2], timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("ConfigError") and "install scimflow[ldap]" in line for line in lines)
    assert "'ldap'" in lines[0] and "'ad'" in lines[1]
