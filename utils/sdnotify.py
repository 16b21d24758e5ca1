"""systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) over ``NOTIFY_SOCKET``.

A few lines over a datagram socket instead of a dependency. Without
``NOTIFY_SOCKET`` every call is a no-op returning False, so the monitor behaves
the same outside systemd.

The message is newline-separated ``KEY=VALUE`` assignments, so a line break inside
a value (say a failure reason in ``STATUS=``) would add an assignment of its own,
e.g. ``MAINPID=1``. So, whatever callers pass, ``STATUS`` values are flattened to one
printable line and :meth:`SystemdNotifier.notify` refuses a message whose lines are not
all ``KEY=VALUE`` with an upper-case key.
"""

from __future__ import annotations

import os
import socket

from utils.text_safety import blank_controls

MAX_STATUS_LENGTH = 1000
_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _status(text: object) -> str:
    """A ``STATUS=`` assignment: every non-printable character a space, cut to :data:`MAX_STATUS_LENGTH`."""
    return "STATUS=" + blank_controls(text)[:MAX_STATUS_LENGTH]


def is_assignment_message(message: str) -> bool:
    """True when every line of ``message`` is ``KEY=VALUE`` with KEY of A-Z 0-9 _ and a printable VALUE."""
    lines = (line.partition("=") for line in message.split("\n"))
    return all(sep and key and _KEY_CHARACTERS.issuperset(key) and value.isprintable() for key, sep, value in lines)


class SystemdNotifier:
    """Sends notify messages to the socket systemd passes in ``NOTIFY_SOCKET``."""

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the Linux abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "").strip()
        watchdog_pid = env.get("WATCHDOG_PID", "").strip()
        # isascii(): str.isdigit() is also true for other scripts' digits.
        usec_ok = watchdog_usec.isascii() and watchdog_usec.isdigit()
        interval = int(watchdog_usec) / 1_000_000 if usec_ok and int(watchdog_usec) > 0 else None
        if watchdog_pid.isascii() and watchdog_pid.isdigit() and int(watchdog_pid) != os.getpid():
            interval = None  # the watchdog is meant for another process
        self.watchdog_interval_seconds: float | None = interval

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        """Send ``message`` (``KEY=VALUE`` lines); True when delivered.

        Never raises: systemd may be gone. A message with a line that is not a
        ``KEY=VALUE`` assignment with a printable value is not sent (False).
        """
        if not self.address or not is_assignment_message(message):
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + ("\n" + _status(status) if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
