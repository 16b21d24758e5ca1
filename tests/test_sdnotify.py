"""utils.sdnotify against real AF_UNIX datagram sockets, as systemd's NOTIFY_SOCKET would be."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid

import pytest

from utils.sdnotify import SystemdNotifier


@pytest.fixture
def notify_socket():
    """A bound datagram socket on a short path (sun_path holds at most 107 bytes; tmp_path can be longer)."""
    directory = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    shutil.rmtree(directory)


def test_it_sends_ready_watchdog_status_and_stopping_datagrams(notify_socket):
    path, sock = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})

    assert notifier.enabled
    assert notifier.ready("watching /var/lib/x") is True
    assert notifier.watchdog() is True
    assert notifier.status("3 checks") is True
    assert notifier.stopping() is True

    received = [sock.recv(4096).decode() for _ in range(4)]
    assert received == ["READY=1\nSTATUS=watching /var/lib/x", "WATCHDOG=1", "STATUS=3 checks", "STOPPING=1"]


def test_it_sends_plain_ready_without_a_status(notify_socket):
    path, sock = notify_socket
    assert SystemdNotifier({"NOTIFY_SOCKET": path}).ready() is True
    assert sock.recv(4096) == b"READY=1"


def test_it_reaches_an_abstract_socket_named_with_an_at_sign():
    name = f"sdnotify-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})

        assert notifier.ready() is True
        assert notifier.watchdog() is True
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_it_returns_false_without_notify_socket():
    notifier = SystemdNotifier({})

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval_seconds is None


def test_it_reads_the_process_environment_by_default(monkeypatch, notify_socket):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert SystemdNotifier().watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert SystemdNotifier().watchdog() is False


def test_it_returns_false_instead_of_raising_when_the_socket_is_gone(tmp_path):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "no-such-socket")})

    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_it_derives_the_watchdog_interval_for_this_process_only(environ, expected):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})
    assert notifier.watchdog_interval_seconds == expected


# --------------------------------------------------------------------------- hostile text (issue 10.10)

HOSTILE = "batch b1 failed: x\nMAINPID=1\r\nWATCHDOG=trigger\0\x1b[2J\u2028READY=1"


def assignment_lines(datagram: bytes) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in datagram.decode().split("\n")]


def test_it_sends_one_status_assignment_whatever_the_text(notify_socket):
    path, sock = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})

    assert notifier.status(HOSTILE) is True
    assert notifier.ready(HOSTILE) is True

    status = assignment_lines(sock.recv(4096))
    ready = assignment_lines(sock.recv(4096))
    assert [key for key, _ in status] == ["STATUS"]
    assert [key for key, _ in ready] == ["READY", "STATUS"]
    for _, value in status + ready:
        assert value.isprintable()
    assert "MAINPID=1" in status[0][1]  # kept as text inside the one value


def test_it_refuses_to_send_a_message_that_is_not_all_assignments(notify_socket):
    path, sock = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})

    for bad in ["STATUS=a\nnot an assignment", "STATUS=a\n", "status=lower", "STATUS=\x1b[2J", "=1", "READY"]:
        assert notifier.notify(bad) is False, bad
    assert notifier.notify("READY=1\nSTATUS=fine") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=fine"  # nothing refused got through before it


def test_it_caps_the_status_length(notify_socket):
    path, sock = notify_socket
    assert SystemdNotifier({"NOTIFY_SOCKET": path}).status("x" * 10_000) is True
    assert len(sock.recv(65536)) == len("STATUS=") + 1000


@pytest.mark.parametrize("value", ["\u0662000000", "2_000_000"])
def test_it_ignores_a_watchdog_interval_not_in_ascii_digits(value):
    assert (
        SystemdNotifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": value}).watchdog_interval_seconds
        is None
    )
