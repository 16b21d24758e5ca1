"""bin/install_batch_monitor_service.sh, run for real into temporary roots (--root), offline (--no-venv).

The installer drives the real systemd-analyze, systemctl --root and systemd-sysusers --root;
no systemd needs to be running. The non-root check runs the script as the user nobody.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALLER = ROOT / "bin" / "install_batch_monitor_service.sh"
PREFIX = "opt/batch-completion-monitor"
UNIT_DIR = "etc/systemd/system"
ENV_FILE = "etc/batch-completion-monitor/batch-completion-monitor.env"
STAGES_FILE = "etc/batch-completion-monitor/nightly_stages.conf"
SYSUSERS_FILE = "etc/sysusers.d/batch-completion-monitor.conf"
UNITS = (
    "batch-completion-monitor.service",
    "nightly-batch.service",
    "nightly-batch-resume.service",
    "nightly-batch.timer",
)
PROJECT_ITEMS = ("bin", "utils", "etc", "docs", "requirements.txt", "README.md")
ENABLEMENT_LINKS = {
    f"{UNIT_DIR}/multi-user.target.wants/batch-completion-monitor.service": "/etc/systemd/system/batch-completion-monitor.service",
    f"{UNIT_DIR}/timers.target.wants/nightly-batch.timer": "/etc/systemd/system/nightly-batch.timer",
}


def run_installer(*args: str, installer: Path = INSTALLER, user: str | None = None) -> subprocess.CompletedProcess:
    command = ["bash", str(installer), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *command]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env, cwd="/")


@pytest.fixture
def system_root(tmp_path) -> Path:
    """An empty tree with the directories a Debian system has, to install into as if it were /."""
    root = tmp_path / "root"
    for directory in (UNIT_DIR, "etc/sysusers.d", "opt", "var/lib", "var/log"):
        (root / directory).mkdir(parents=True)
    return root


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: type, mode, owner and content hash or link target (no times)."""
    entries = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            info = path.lstat()
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                entries[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = ("dir", oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[relative] = ("file", oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid, digest)
    return entries


def shipped_project_files() -> set[str]:
    """The project files the installer copies: PROJECT_ITEMS without caches."""
    files = set()
    for item in PROJECT_ITEMS:
        source = ROOT / item
        paths = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        for path in paths:
            if "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(str(path.relative_to(ROOT)))
    return files


def install(system_root: Path, *extra: str) -> subprocess.CompletedProcess:
    result = run_installer("--root", str(system_root), "--no-venv", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_it_installs_units_env_file_user_and_enablement_into_a_root(system_root):
    result = install(system_root)

    for unit in UNITS:
        installed = system_root / UNIT_DIR / unit
        assert installed.read_bytes() == (ROOT / "etc" / unit).read_bytes(), unit  # default prefix: as shipped
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    for link, target in ENABLEMENT_LINKS.items():
        assert os.readlink(system_root / link) == target
    enabled = subprocess.run(
        ["systemctl", f"--root={system_root}", "is-enabled", "batch-completion-monitor.service", "nightly-batch.timer"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert enabled.stdout.split() == ["enabled", "enabled"], enabled.stdout + enabled.stderr

    env_file = system_root / ENV_FILE
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_bytes() == (ROOT / "etc" / "batch-completion-monitor.env.example").read_bytes()
    assert (system_root / STAGES_FILE).is_file()

    passwd = (system_root / "etc" / "passwd").read_text().splitlines()
    entry = next(line for line in passwd if line.startswith("batchmon:")).split(":")
    assert 0 < int(entry[2]) < 1000  # a system user
    assert entry[5:] == ["/var/lib/batch-completion-monitor", "/usr/sbin/nologin"]
    assert (system_root / SYSUSERS_FILE).read_bytes() == (ROOT / SYSUSERS_FILE).read_bytes()
    assert "nothing started" in result.stdout


def test_it_copies_the_project_without_venv_data_logs_git_or_caches(system_root):
    install(system_root)
    target = system_root / PREFIX

    installed = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() or p.is_symlink()}
    assert installed - {".batch-completion-monitor-install"} == shipped_project_files()
    for absent in (".venv", "data", "logs", ".git", "tests"):
        assert not (target / absent).exists(), absent
    assert stat.S_IMODE((target / "bin" / "run_nightly.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "utils" / "batch_tracker.py").stat().st_mode) == 0o644
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_it_installs_units_that_systemd_analyze_verify_accepts(system_root, tmp_path):
    install(system_root)
    # ExecStart= programs must exist for verify: the installed tree stands in for /, and the
    # venv (not built with --no-venv) is the interpreter running this test.
    target = str(system_root / PREFIX)
    checked = tmp_path / "verify"
    checked.mkdir()
    for unit in UNITS:
        text = (system_root / UNIT_DIR / unit).read_text()
        text = text.replace(f"/{PREFIX}/.venv/bin/python", sys.executable).replace(f"/{PREFIX}", target)
        (checked / unit).write_text(text)

    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(checked / unit) for unit in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_it_changes_nothing_when_run_twice(system_root):
    install(system_root)
    first = tree(system_root)

    second_run = install(system_root)

    assert tree(system_root) == first
    assert "kept /etc/batch-completion-monitor/batch-completion-monitor.env" in second_run.stdout


def test_it_never_overwrites_an_existing_environment_file(system_root):
    env_file = system_root / ENV_FILE
    env_file.parent.mkdir(parents=True)
    env_file.write_text("SMTP_SERVER=mail.example.com\nALERT_EMAIL_TO=oncall@example.com\n")
    env_file.chmod(0o640)

    install(system_root)

    assert env_file.read_text() == "SMTP_SERVER=mail.example.com\nALERT_EMAIL_TO=oncall@example.com\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640


def test_it_uninstalls_what_it_added_and_keeps_the_environment_file(system_root):
    before = tree(system_root)
    install(system_root)
    env_file = system_root / ENV_FILE
    env_file.write_text(env_file.read_text() + "ALERT_EMAIL_TO=oncall@example.com\n")
    state = system_root / "var/lib/batch-completion-monitor"
    state.mkdir()
    (state / "batch_tracker.json").write_text("{}")

    result = run_installer("--root", str(system_root), "--uninstall")

    assert result.returncode == 0, result.stdout + result.stderr
    after = tree(system_root)
    kept = {
        # settings, stage list, state and the user stay; everything else the install added is gone
        "etc/batch-completion-monitor",
        ENV_FILE,
        STAGES_FILE,
        "var/lib/batch-completion-monitor",
        "var/lib/batch-completion-monitor/batch_tracker.json",
        *(f"etc/{name}" for name in ("passwd", "group", "shadow", "gshadow", ".pwd.lock")),
    }
    assert set(after) - set(before) == kept
    assert {path: after[path] for path in before} == before
    assert env_file.read_text().endswith("ALERT_EMAIL_TO=oncall@example.com\n")
    assert "kept: /etc/batch-completion-monitor/batch-completion-monitor.env" in result.stdout
    assert "kept: /var/lib/batch-completion-monitor" in result.stdout


def test_it_refuses_to_run_without_root_and_changes_nothing():
    watched = [Path("/opt/batch-completion-monitor"), Path("/etc/batch-completion-monitor"), Path("/etc/sysusers.d")]
    watched += [Path("/etc/systemd/system") / unit for unit in UNITS]
    before = [(path, path.exists()) for path in watched]
    unit_dir_before = sorted(os.listdir("/etc/systemd/system")) if os.path.isdir("/etc/systemd/system") else []

    result = run_installer(user="nobody") if os.getuid() == 0 else run_installer()

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "must run as root" in result.stderr and "--root DIR" in result.stderr
    assert [(path, path.exists()) for path in watched] == before
    assert (sorted(os.listdir("/etc/systemd/system")) if os.path.isdir("/etc/systemd/system") else []) == (
        unit_dir_before
    )


def test_it_writes_a_schedule_drop_in_keeps_it_on_upgrade_and_removes_it_on_uninstall(system_root):
    drop_in = system_root / UNIT_DIR / "nightly-batch.timer.d" / "schedule.conf"

    install(system_root, "--nightly-time", "02:30", "--nightly-timezone", "Europe/Berlin")
    written = drop_in.read_text()
    assert "OnCalendar=\nOnCalendar=*-*-* 02:30:00 Europe/Berlin\n" in written
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o644

    upgrade = install(system_root)
    assert drop_in.read_text() == written
    assert "kept the schedule" in upgrade.stdout

    assert run_installer("--root", str(system_root), "--uninstall").returncode == 0
    assert not drop_in.parent.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--nightly-time", "25:00"], "'25:00'"),
        (["--nightly-time", "01:00", "--nightly-timezone", "Mars/Olympus"], "'Mars/Olympus'"),
        (["--prefix", "relative/dir"], "'relative/dir'"),
        (["--prefix", "/usr"], "'/usr'"),
        (["--frobnicate"], "'--frobnicate'"),
        (["--uninstall", "--no-timer"], "--uninstall"),
    ],
)
def test_it_rejects_bad_options_in_one_line_and_changes_nothing(system_root, args, named):
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--no-venv", *args)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and named in result.stderr, result.stderr
    assert tree(system_root) == before


def test_it_refuses_an_install_directory_it_did_not_create(system_root):
    foreign = system_root / "srv" / "app"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("keep me")
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--no-venv", "--prefix", "/srv/app")

    assert result.returncode == 2
    assert "was not installed by this script" in result.stderr
    assert tree(system_root) == before


def test_it_installs_into_another_prefix_and_uninstalls_from_it(system_root):
    install(system_root, "--prefix", "/srv/batch-monitor")

    monitor_unit = (system_root / UNIT_DIR / "batch-completion-monitor.service").read_text()
    assert (
        "ExecStart=/srv/batch-monitor/.venv/bin/python /srv/batch-monitor/bin/batch_completion_monitor.py"
        in monitor_unit
    )
    assert "/opt/batch-completion-monitor" not in monitor_unit
    assert (system_root / "srv/batch-monitor/bin/run_nightly.sh").is_file()
    assert not (system_root / PREFIX).exists()

    # --uninstall finds the install directory from the installed unit.
    assert run_installer("--root", str(system_root), "--uninstall").returncode == 0
    assert not (system_root / "srv/batch-monitor").exists()


def test_it_leaves_the_timer_disabled_with_no_timer(system_root):
    install(system_root, "--no-timer")

    assert (system_root / UNIT_DIR / "multi-user.target.wants/batch-completion-monitor.service").is_symlink()
    assert not (system_root / UNIT_DIR / "timers.target.wants/nightly-batch.timer").exists()
    assert (system_root / UNIT_DIR / "nightly-batch.timer").is_file()


def test_it_verifies_the_units_before_changing_anything(system_root, tmp_path):
    source = tmp_path / "checkout"
    for item in PROJECT_ITEMS:
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, source / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / item).exists():
            shutil.copy2(ROOT / item, source / item)
    broken = source / "etc" / "batch-completion-monitor.service"
    broken.write_text(broken.read_text().replace("WatchdogSec=30s", "WatchdogSec=soon"))
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--no-venv", installer=source / "bin" / INSTALLER.name)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "batch-completion-monitor.service:" in result.stderr and "soon" in result.stderr
    assert "nothing was changed" in result.stderr
    assert tree(system_root) == before


def test_it_prints_its_usage_with_help():
    result = run_installer("--help", user="nobody") if os.getuid() == 0 else run_installer("--help")

    assert result.returncode == 0
    for option in ("--prefix DIR", "--root DIR", "--no-venv", "--nightly-time HH:MM", "--uninstall", "Exit codes"):
        assert option in result.stdout
