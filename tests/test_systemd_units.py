"""The shipped systemd units: verified and scored by the real systemd-analyze, and run for real.

``systemd-analyze verify`` checks that every ExecStart= program exists. The shipped units
name the default install directory (/opt/batch-completion-monitor), which does not exist on
a CI machine, so the verify test checks a copy in which that directory is this checkout and
the venv's interpreter is the one running the tests: nothing else is rewritten. The
installer test checks that an installed unit is byte-identical to the shipped one, and the
installer itself verifies the units before it installs them.

The ExecStart= test runs the unit's own command line with the unit's Environment= (paths
remapped the same way, the state directory moved to tmp_path), the way systemd would:
a notify socket, WATCHDOG_USEC, a clean environment, UMask=, NoNewPrivileges= and
MemoryDenyWriteExecute= (the kernel's PR_SET_MDWE, which is what systemd uses where the
kernel has it). Systemd's other sandboxing (namespaces, seccomp) needs PID 1 and is covered
by the verify and security tests only.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from helpers import assert_systemd_verifies

ROOT = Path(__file__).resolve().parent.parent
ETC = ROOT / "etc"
INSTALL_DIR = "/opt/batch-completion-monitor"
STATE_DIR = "/var/lib/batch-completion-monitor"
MONITOR = ETC / "batch-completion-monitor.service"
NIGHTLY = ETC / "nightly-batch@.service"  # instances: nightly-batch@run, nightly-batch@resume
TIMER = ETC / "nightly-batch.timer"
UNITS = (MONITOR, NIGHTLY, TIMER)
RUNNER = ROOT / "bin" / "run_nightly.sh"
MAX_EXPOSURE = 1.5
RUNNER_VARIABLES = (("NIGHTLY_STAGES_FILE", "etc/nightly_stages.conf"), ("LOG_DIR", "logs"))


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists (keys may repeat, as in systemd)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [value for k, value in parse_unit(path).get(section, []) if k == key]


def value(path: Path, section: str, key: str) -> str:
    found = values(path, section, key)
    assert found, f"{path.name}: [{section}] has no {key}="
    return found[-1]


def seconds(timespan: str) -> float:
    """A systemd time span such as 30s, 2min, 1h 30min, 500ms, in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan):
        total += float(number) * units[unit]
    return total


def unit_environment(path: Path) -> dict[str, str]:
    """The unit's Environment= assignments (quoted words allowed, as systemd allows)."""
    environment = {}
    for assignment in values(path, "Service", "Environment"):
        for word in shlex.split(assignment):
            name, _, val = word.partition("=")
            environment[name] = val
    return environment


def rewrite_for_this_checkout(text: str) -> str:
    """The install directory becomes this checkout; its venv, the one running the tests.

    bin/setup.sh installed the project into that venv, so its bin/ has the console scripts the
    units start (batch-completion-monitor), as the installer's venv has.
    """
    text = text.replace(f"{INSTALL_DIR}/.venv/bin/", f"{Path(sys.executable).parent}/")
    return text.replace(INSTALL_DIR, str(ROOT))


def test_it_verifies_all_units_with_systemd_analyze(tmp_path):
    for unit in UNITS:
        (tmp_path / unit.name).write_text(rewrite_for_this_checkout(unit.read_text()))

    assert_systemd_verifies(tmp_path / unit.name for unit in UNITS)


def test_it_starts_only_programs_of_the_install_directory_that_the_project_ships():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for unit in (MONITOR, NIGHTLY):
        words = value(unit, "Service", "ExecStart").split()
        paths = [word for word in words if word.startswith("/")]
        assert paths and all(path.startswith(INSTALL_DIR + "/") for path in paths), words
        for path in paths:
            if path.startswith(f"{INSTALL_DIR}/.venv/bin/"):  # the venv is built by the installer
                assert path.rsplit("/", 1)[1] in scripts, f"{path}: not a console script of pyproject.toml"
            else:
                assert (ROOT / path.removeprefix(INSTALL_DIR + "/")).is_file(), path


def test_it_starts_the_monitor_with_the_venvs_console_script_without_the_checkouts_path():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert value(MONITOR, "Service", "ExecStart") == f"{INSTALL_DIR}/.venv/bin/batch-completion-monitor"
    assert scripts["batch-completion-monitor"] == "utils.service:main"
    # No PYTHONPATH: the project is installed in the venv.
    assert "PYTHONPATH" not in unit_environment(MONITOR) and "PYTHONPATH" not in unit_environment(NIGHTLY)


def test_it_rates_the_monitor_at_an_exposure_of_at_most_1_5():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(MONITOR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for batch-completion-monitor\.service: (\d+\.\d+)", result.stdout)

    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_it_runs_the_monitor_as_a_notify_service_with_a_watchdog():
    assert value(MONITOR, "Service", "Type") == "notify"
    assert value(MONITOR, "Service", "NotifyAccess") == "main"
    assert 5 <= seconds(value(MONITOR, "Service", "WatchdogSec")) <= 300


def test_it_restarts_on_failure_with_a_back_off_but_not_on_bad_configuration():
    assert value(MONITOR, "Service", "Restart") == "on-failure"
    assert seconds(value(MONITOR, "Service", "RestartSec")) >= 10
    assert "2" in value(MONITOR, "Service", "RestartPreventExitStatus").split()
    # RestartSteps=/RestartMaxDelaySec= need systemd 254; Debian 12 has 252 (verify would warn).
    assert not values(MONITOR, "Service", "RestartSteps")


def test_it_runs_as_an_unprivileged_user_that_can_write_only_its_state_directory():
    for unit in (MONITOR, NIGHTLY):
        assert value(unit, "Service", "User") == "batchmon"
        assert value(unit, "Service", "StateDirectory") == "batch-completion-monitor"
        assert value(unit, "Service", "EnvironmentFile") == (
            "-/etc/batch-completion-monitor/batch-completion-monitor.env"
        )
        assert unit_environment(unit)["BATCH_TRACKER_FILE"] == f"{STATE_DIR}/batch_tracker.json"
    assert value(MONITOR, "Service", "ProtectSystem") == "strict"
    assert not values(MONITOR, "Service", "ReadWritePaths")
    assert unit_environment(MONITOR)["BATCH_OUTBOX_DIR"] == f"{STATE_DIR}/outbox"
    assert value(MONITOR, "Service", "CapabilityBoundingSet") == ""
    assert value(MONITOR, "Service", "NoNewPrivileges") == "yes"


def test_it_limits_the_monitors_open_files_above_what_its_http_connection_cap_needs():
    from utils.http_server import MAX_CONNECTIONS

    limit = int(value(MONITOR, "Service", "LimitNOFILE"))  # one number: soft and hard limit alike

    # The monitor serves min(MAX_CONNECTIONS, limit // 4) connections: the unit's limit must not lower it.
    assert 4 * MAX_CONNECTIONS <= limit <= 65536


def test_it_starts_the_monitor_after_the_network_is_online():
    assert "network-online.target" in value(MONITOR, "Unit", "After").split()
    assert "network-online.target" in value(MONITOR, "Unit", "Wants").split()
    assert value(MONITOR, "Install", "WantedBy") == "multi-user.target"


def test_it_schedules_the_nightly_batch_in_a_time_zone_and_catches_up_missed_runs():
    calendar = value(TIMER, "Timer", "OnCalendar")
    zone = calendar.split()[-1]

    assert value(TIMER, "Timer", "Persistent") == "true"
    assert "/" in zone and (Path("/usr/share/zoneinfo") / zone).is_file(), calendar
    parsed = subprocess.run(
        ["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=30, check=False
    )
    assert parsed.returncode == 0, parsed.stderr
    assert f"Normalized form: {calendar}" in parsed.stdout
    assert value(TIMER, "Timer", "Unit") == "nightly-batch@run.service"
    assert value(TIMER, "Install", "WantedBy") == "timers.target"


def test_it_runs_the_nightly_batch_once_with_run_nightly():
    assert value(NIGHTLY, "Service", "Type") == "oneshot"
    assert value(NIGHTLY, "Service", "ExecStart") == f"{INSTALL_DIR}/bin/run_nightly.sh --%i"
    # A oneshot's default start timeout (90 s) would kill a nightly batch.
    assert seconds(value(NIGHTLY, "Service", "TimeoutStartSec")) >= 6 * 3600


def test_it_runs_and_resumes_the_nightly_batch_from_one_template_unit():
    # One [Service] section for both: no second unit file that could drift from it.
    assert sorted(path.name for path in ETC.glob("nightly-batch*.service")) == ["nightly-batch@.service"]
    assert parse_unit(NIGHTLY).get("Install") is None  # started by the timer (run) or by hand (resume)
    guide = (ROOT / "docs" / "batch-completion-monitoring.md").read_text()
    for instance in ("run", "resume"):
        assert f"systemctl start nightly-batch@{instance}" in guide


@pytest.mark.parametrize(("instance", "status"), [("run", 0), ("resume", 0), ("bogus", 2)])
def test_it_gives_run_nightly_the_instance_as_its_mode(tmp_path, instance, status):
    # ExecStart= with %i expanded as systemd does, run for real (--dry-run: nothing recorded).
    command = shlex.split(rewrite_for_this_checkout(value(NIGHTLY, "Service", "ExecStart")).replace("%i", instance))
    stages = tmp_path / "stages.conf"
    stages.write_text("fetch true\n")
    environment = {
        "PATH": "/usr/bin:/bin",
        "NIGHTLY_STAGES_FILE": str(stages),
        "LOG_DIR": str(tmp_path / "logs"),
        "BATCH_TRACKER_FILE": str(tmp_path / "batch_tracker.json"),
        "BATCH_TRACKER_PYTHON": sys.executable,
    }

    result = subprocess.run(
        [*command, "--dry-run"], env=environment, capture_output=True, text=True, timeout=30, check=False
    )

    assert command[0] == str(RUNNER)
    assert result.returncode == status, result.stdout + result.stderr
    if status == 0:
        assert ("resume:" in result.stdout) == (instance == "resume"), result.stdout
    else:
        assert result.stderr.strip() == (
            "run_nightly.sh: error: unknown argument '--bogus' (allowed: --run, --resume, --dry-run, --help)"
        )
    assert not (tmp_path / "batch_tracker.json").exists()


def documented_variables() -> list[tuple[str, str]]:
    from utils.config import VARIABLES

    return [(name, default) for name, default, _ in VARIABLES] + list(RUNNER_VARIABLES)


def test_it_lists_every_variable_commented_with_its_default_in_the_env_example():
    example = (ETC / "batch-completion-monitor.env.example").read_text()
    assignments = dict(re.findall(r"^#([A-Z][A-Z0-9_]*)=(.*)$", example, flags=re.MULTILINE))

    for name, default in documented_variables():
        assert name in assignments, f"{name} missing from the env example"
        if not default.startswith("("):  # "(unset)", "(empty)": any example value
            # "587 starttls / ..." -> 587; "bin/run_nightly.sh --resume (in the project root)" -> the command
            expected = re.sub(r" \(.*\)$", "", default)
            assert assignments[name] in (expected, expected.split()[0]), f"{name}: example says {assignments[name]!r}"
    # Nothing is set by default: the units' own defaults (state directory paths) must win.
    assert not re.findall(r"^[A-Za-z_]+=", example, flags=re.MULTILINE)


def test_it_documents_every_variable_in_the_user_guide():
    guide = (ROOT / "docs" / "batch-completion-monitoring.md").read_text()
    missing = [name for name, _ in documented_variables() if f"`{name}`" not in guide]
    assert not missing


# ----------------------------------------------------------------------------- the unit's ExecStart, for real


# Applies to itself what systemd applies that needs no privileges, then execs the unit's command
# (a launcher rather than preexec_fn: forking a process with threads and running Python in the
# child is unsafe).
SANDBOX_LAUNCHER = """
import ctypes, os, resource, sys
os.umask(0o077)  # UMask=0077
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # LimitNOFILE=
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: NoNewPrivileges=yes
    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: MemoryDenyWriteExecute=yes as systemd applies it on
# kernels >= 6.3; it survives execve. EINVAL: an older kernel, nothing to emulate with.
if libc.prctl(65, 1, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
    raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture
def notify_socket():
    directory = tempfile.mkdtemp(prefix="sdn-")  # short: sun_path holds 107 bytes, tmp_path may not fit
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()
    shutil.rmtree(directory)


def _drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except BlockingIOError:
            return into


@pytest.mark.slow
def test_it_runs_the_units_exec_start_serving_metrics_and_answering_the_watchdog(tmp_path, notify_socket):
    notify_path, notify_sock = notify_socket
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o750)
    port = free_port()
    command = shlex.split(rewrite_for_this_checkout(value(MONITOR, "Service", "ExecStart")))
    environment = {
        # What systemd passes a system service, plus the unit's Environment=.
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "LANG": "C.UTF-8",
        "HOME": str(state_dir),
        "STATE_DIRECTORY": str(state_dir),
        "NOTIFY_SOCKET": notify_path,
        "WATCHDOG_USEC": "2000000",
        **{name: val.replace(STATE_DIR, str(state_dir)) for name, val in unit_environment(MONITOR).items()},
        # As an environment file would: a free port, and no mail leaves the machine.
        "METRICS_PORT": str(port),
        "BATCH_COMPLETION_CHECK_INTERVAL_SECONDS": "300",
    }
    working_directory = value(MONITOR, "Service", "WorkingDirectory").replace(STATE_DIR, str(state_dir))
    process = subprocess.Popen(
        [sys.executable, "-c", SANDBOX_LAUNCHER, value(MONITOR, "Service", "LimitNOFILE"), *command],
        env=environment,
        cwd=working_directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        datagrams: list[str] = []

        def exited_early() -> None:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"monitor exited with {process.returncode}: {err[-2000:]}{out[-500:]}")

        def ready():
            exited_early()
            return any("READY=1" in d.split("\n") for d in _drain(notify_sock, datagrams))

        wait_until(ready, timeout=15, message="READY=1 on NOTIFY_SOCKET")

        def scrape():
            exited_early()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return response.status, response.headers.get("Content-Type", ""), response.read().decode()
            except OSError:
                return None

        status, content_type, body = wait_until(scrape, timeout=10, message="/metrics")
        assert status == 200
        with open(f"/proc/{process.pid}/limits") as limits:
            open_files = next(line for line in limits if line.startswith("Max open files")).split()
        assert open_files[3:5] == [value(MONITOR, "Service", "LimitNOFILE")] * 2
        assert content_type.startswith("text/plain")
        assert "# TYPE anthrasite_batch_" in body

        def watchdog_pings_after_ready() -> bool:
            exited_early()
            _drain(notify_sock, datagrams)
            first_ready = next(i for i, d in enumerate(datagrams) if "READY=1" in d.split("\n"))
            return sum("WATCHDOG=1" in d.split("\n") for d in datagrams[first_ready + 1 :]) >= 2

        # WATCHDOG_USEC=2 s: systemd expects a ping at least every 2 s; two of them prove a loop.
        wait_until(watchdog_pings_after_ready, timeout=10, message="two WATCHDOG=1 after READY=1")

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err[-2000:]
        assert time.monotonic() - started < 5
        assert any("STOPPING=1" in d.split("\n") for d in _drain(notify_sock, datagrams)), datagrams
        # Everything it wrote went to the state directory, private to the service user (UMask=0077).
        written = [p for p in state_dir.rglob("*") if p.is_file()]
        assert written, "the monitor wrote no state"
        assert all(p.stat().st_mode & 0o077 == 0 for p in written), [oct(p.stat().st_mode) for p in written]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
