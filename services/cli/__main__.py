"""``python -m services.cli``: the ``scimflow`` command (how the supervisor starts workers)."""

from services.cli import main

main()
