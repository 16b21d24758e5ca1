#!/usr/bin/env python3
"""Watch the nightly batch and e-mail on-call when it is late, failed, missing or unreadable.

Runs until SIGTERM/SIGINT (as a systemd service, Type=notify with a watchdog), or
with ``--once`` runs one check, delivers what it queued, prints one status line and
exits. ``outbox list`` shows the queued and failed alert e-mails; ``outbox retry ID...``
(or ``--all``) puts failed ones back in the queue. Exit codes: 0 all well (or a clean
stop), 1 an incident is open (``--once``), 2 bad configuration or usage (an unknown id),
3 the state or outbox cannot be written. See :mod:`utils.service`.

Run it with the project's venv python (the project is installed there, so ``utils`` is
importable from any directory), or use the ``batch-completion-monitor`` script the venv has.
"""

import sys

from utils.service import main

if __name__ == "__main__":
    sys.exit(main())
