"""systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) over ``NOTIFY_SOCKET``.

A few lines over a datagram socket instead of a dependency. Without
``NOTIFY_SOCKET`` every call is a no-op returning False, so the monitor behaves
the same outside systemd.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends notify messages to the socket systemd passes in ``NOTIFY_SOCKET``."""

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the Linux abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "").strip()
        watchdog_pid = env.get("WATCHDOG_PID", "").strip()
        interval = int(watchdog_usec) / 1_000_000 if watchdog_usec.isdigit() and int(watchdog_usec) > 0 else None
        if watchdog_pid.isdigit() and int(watchdog_pid) != os.getpid():
            interval = None  # the watchdog is meant for another process
        self.watchdog_interval_seconds: float | None = interval

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        """Send ``message``; True when delivered. Never raises: systemd may be gone."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
