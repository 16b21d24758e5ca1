"""bin/install_batch_monitor_service.sh, run for real into temporary roots (--root).

The installer drives the real systemd-analyze, systemctl --root and systemd-sysusers --root;
no systemd needs to be running. Most tests skip the venv (--no-venv); the venv tests build one
tree with the real venv step (/usr/bin/python3, pip from the configured index) and copy it.
The non-root checks run the script as the user nobody, from a copy every user can reach.

What an operator runs on the installed machine (the operator commands, the guide's cron line)
runs for real inside the installed tree: a private mount namespace lays the tree's /etc, /opt
and /usr/local over the host's (overlayfs, read-only) and sends writes to its /var/lib and
/var/log into the tree, so the programs see the paths they were installed for, the batchmon
user of the tree's /etc/passwd, and the host sees nothing.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_for_other_users
from helpers import assert_systemd_verifies

ROOT = Path(__file__).resolve().parent.parent
INSTALLER = ROOT / "bin" / "install_batch_monitor_service.sh"
PREFIX = "opt/batch-completion-monitor"
UNIT_DIR = "etc/systemd/system"
ENV_FILE = "etc/batch-completion-monitor/batch-completion-monitor.env"
STAGES_FILE = "etc/batch-completion-monitor/nightly_stages.conf"
SYSUSERS_FILE = "etc/sysusers.d/batch-completion-monitor.conf"
UNITS = ("batch-completion-monitor.service", "nightly-batch@.service", "nightly-batch.timer")
# The two units the template replaced, as an earlier version installed them.
OLD_UNITS = ("nightly-batch.service", "nightly-batch-resume.service")
PROJECT_ITEMS = ("bin", "utils", "etc", "docs", "pyproject.toml", "requirements.txt", "README.md")
STATE_DIR = "var/lib/batch-completion-monitor"
LOGS_DIR = "var/log/batch-completion-monitor"
CLI_WRAPPER = "usr/local/bin/batch-tracker"
NIGHTLY_WRAPPER = "usr/local/bin/batch-nightly"
GUIDE = ROOT / "docs" / "batch-completion-monitoring.md"
IS_ROOT = os.getuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (setpriv, mount namespaces)")
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
    for directory in (UNIT_DIR, "etc/sysusers.d", "opt", "usr/local/bin", "var/lib", "var/log"):
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


def install(
    system_root: Path, *extra: str, venv: bool = False, installer: Path = INSTALLER
) -> subprocess.CompletedProcess:
    result = run_installer("--root", str(system_root), *([] if venv else ["--no-venv"]), *extra, installer=installer)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def env_file_values(text: str) -> dict[str, str]:
    """The NAME=value assignments of an environment file's text (comments and blank lines skipped)."""
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def user_ids(system_root: Path, user: str = "batchmon") -> tuple[int, int]:
    entry = next(line for line in (system_root / "etc/passwd").read_text().splitlines() if line.startswith(f"{user}:"))
    return int(entry.split(":")[2]), int(entry.split(":")[3])


def run_in_installed_tree(system_root: Path, work: Path, command: str) -> subprocess.CompletedProcess:
    """``/bin/sh -c command`` as root with cron's environment, on a system where system_root is installed.

    A private mount namespace: the tree's /etc, /opt and /usr/local over the host's (read-only),
    writes to /var/lib and /var/log go into the tree. Nothing changes outside it.
    """
    mounts = [("etc", None), ("opt", None), ("usr/local", None), ("var/lib", "lib"), ("var/log", "log")]
    script = ["set -e"]
    for directory, upper in mounts:
        if upper is None:
            options = f"lowerdir={system_root / directory}:/{directory}"
        else:
            (work / upper).mkdir(parents=True, exist_ok=True)
            options = f"lowerdir=/{directory},upperdir={system_root / directory},workdir={work / upper}"
        script.append(f"mount -t overlay overlay -o {shlex.quote(options)} /{directory}")
    script.append('exec env -i PATH=/usr/bin:/bin HOME=/root SHELL=/bin/sh LOGNAME=root /bin/sh -c "$0"')
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", "\n".join(script), command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )


def copy_project(target: Path) -> Path:
    """The shipped project items copied to target (a checkout that does not change under the test)."""
    for item in PROJECT_ITEMS:
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, target / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / item).exists():
            shutil.copy2(ROOT / item, target / item)
    return target


@pytest.fixture(scope="module")
def snapshot_installer(tmp_path_factory) -> Path:
    """The installer of a snapshot of the project: runs compared with each other install the same files."""
    return copy_project(tmp_path_factory.mktemp("snapshot") / "checkout") / "bin" / INSTALLER.name


@pytest.fixture(scope="module")
def venv_tree(tmp_path_factory, snapshot_installer) -> Path:
    """One tree installed with the real venv step (default options); tests work on copies of it."""
    root = tmp_path_factory.mktemp("venv-tree") / "root"
    for directory in (UNIT_DIR, "etc/sysusers.d", "opt", "usr/local/bin", "var/lib", "var/log"):
        (root / directory).mkdir(parents=True)
    install(root, venv=True, installer=snapshot_installer)
    return root


@pytest.fixture
def venv_root(venv_tree, tmp_path) -> Path:
    """A private copy of the venv tree (owners and modes kept)."""
    copy = tmp_path / "root"
    subprocess.run(["cp", "-a", str(venv_tree), str(copy)], check=True, timeout=60)
    return copy


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
    example = (ROOT / "etc" / "batch-completion-monitor.env.example").read_text()
    written = env_file.read_text()
    assert written.startswith(example)
    assert env_file_values(written[len(example) :]) == {
        "BATCH_CLI_COMMAND": "sudo /usr/local/bin/batch-tracker",
        "BATCH_RUN_COMMAND": "sudo systemctl start nightly-batch@run",
        "BATCH_RESUME_COMMAND": "sudo systemctl start nightly-batch@resume",
        "LOG_DIR": "/var/log/batch-completion-monitor",
    }
    assert (system_root / STAGES_FILE).is_file()
    for wrapper in (CLI_WRAPPER, NIGHTLY_WRAPPER):
        assert stat.S_IMODE((system_root / wrapper).stat().st_mode) == 0o755

    passwd = (system_root / "etc" / "passwd").read_text().splitlines()
    entry = next(line for line in passwd if line.startswith("batchmon:")).split(":")
    assert 0 < int(entry[2]) < 1000  # a system user
    assert entry[5:] == ["/var/lib/batch-completion-monitor", "/usr/sbin/nologin"]
    assert (system_root / SYSUSERS_FILE).read_bytes() == (ROOT / SYSUSERS_FILE).read_bytes()
    for directory in (STATE_DIR, LOGS_DIR):  # for the operator commands and cron, before any unit ran
        info = (system_root / directory).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o750, int(entry[2]), int(entry[3]))
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
    # venv (not built with --no-venv) is the one running this test, where bin/setup.sh
    # installed the project (console scripts included).
    target = str(system_root / PREFIX)
    checked = tmp_path / "verify"
    checked.mkdir()
    for unit in UNITS:
        text = (system_root / UNIT_DIR / unit).read_text()
        text = text.replace(f"/{PREFIX}/.venv/bin/", f"{Path(sys.executable).parent}/").replace(f"/{PREFIX}", target)
        (checked / unit).write_text(text)

    assert_systemd_verifies(checked / unit for unit in UNITS)


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--no-timer"],
        ["--nightly-time", "02:30", "--nightly-timezone", "Europe/Berlin"],
        ["--prefix", "/srv/batch-monitor", "--no-timer", "--nightly-time", "03:15"],
    ],
)
def test_it_changes_nothing_when_run_twice(system_root, options, snapshot_installer):
    install(system_root, *options, installer=snapshot_installer)
    first = tree(system_root)

    second_run = install(system_root, *options, installer=snapshot_installer)
    assert tree(system_root) == first
    third_run = install(system_root, *options, installer=snapshot_installer)
    assert tree(system_root) == first
    for run in (second_run, third_run):
        assert "kept /etc/batch-completion-monitor/batch-completion-monitor.env" in run.stdout


@pytest.mark.slow  # shares the venv tree (a real venv and pip install, ~10-25 s)
def test_it_changes_nothing_when_run_again_with_the_venv_step(venv_root, snapshot_installer):
    first = tree(venv_root)

    # The venv step used to stop the second run half-way (exit 1, no message).
    for _ in range(2):
        result = install(venv_root, "--python", "/usr/bin/python3", venv=True, installer=snapshot_installer)
        assert "venv ready" in result.stdout
        assert tree(venv_root) == first


@pytest.mark.slow  # shares the venv tree (a real venv and pip install, ~10-25 s)
def test_it_builds_the_venv_from_the_system_python_with_the_runtime_dependencies_only(venv_root, tmp_path):
    # Built with PATH starting at the test venv's bin (a pyenv interpreter on some machines).
    venv_python = venv_root / PREFIX / ".venv" / "bin" / "python"
    assert os.path.realpath(venv_python) == os.path.realpath("/usr/bin/python3")
    assert (venv_root / PREFIX / ".venv" / "pyvenv.cfg").read_text().count(str(venv_root)) == 0
    listed = subprocess.run(
        [str(venv_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=60, check=True
    )
    packages = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    assert {"prometheus-client", "pytz", "batch-completion-monitor"} <= packages
    assert not packages & {"pytest", "playwright", "ruff", "hypothesis", "aiosmtpd", "bandit", "pyyaml"}
    # The project itself, without extras: its console scripts, run by the venv's interpreter.
    for script in ("batch-completion-monitor", "batch-tracker"):
        first_line = (venv_root / PREFIX / ".venv" / "bin" / script).read_text().splitlines()[0]
        assert first_line == f"#!/{PREFIX}/.venv/bin/python", (script, first_line)
    # Nothing of the --root tree or of the build left in the venv's text files or the install directory.
    texts = [
        p for p in (venv_root / PREFIX / ".venv").rglob("*") if p.is_file() and p.suffix in {".py", ".pth", ".json"}
    ]
    assert not [p for p in texts if str(venv_root) in p.read_text(errors="replace")]
    assert not list((venv_root / PREFIX).glob("*.egg-info")) and not (venv_root / PREFIX / "build").exists()
    # Byte-compiled for the installed paths (tracebacks), not the --root tree's.
    (compiled,) = (venv_root / PREFIX / "utils" / "__pycache__").glob("batch_tracker.*.pyc")
    assert marshal.loads(compiled.read_bytes()[16:]).co_filename == f"/{PREFIX}/utils/batch_tracker.py"
    if IS_ROOT:  # the service user runs it, from the paths the units name, from any directory
        imported = run_in_installed_tree(
            venv_root,
            tmp_path / "overlay",
            "cd / && setpriv --reuid=batchmon --regid=batchmon --init-groups /opt/batch-completion-monitor/.venv/bin/"
            "python -c 'import os, prometheus_client, pytz, utils.monitor; print(os.getuid(), utils.monitor.__file__)'",
        )
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.split() == [str(user_ids(venv_root)[0]), f"/{PREFIX}/utils/monitor.py"]


@needs_root
def test_it_refuses_an_interpreter_the_service_user_cannot_run_and_changes_nothing(system_root, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    (private / "python3").symlink_to("/usr/bin/python3")
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--python", str(private / "python3"))

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert f"'{private / 'python3'}'" in result.stderr and "cannot be run by the service user" in result.stderr
    assert tree(system_root) == before


def test_it_refuses_an_interpreter_in_a_home_directory(system_root):
    # pyenv, asdf: the first python3 on root's PATH is often one of these.
    found = [
        path
        for path in (shutil.which("python3"), os.path.realpath(sys.executable))
        if path and os.path.realpath(path).startswith(("/root/", "/home/"))
    ]
    if not found:
        pytest.skip("no interpreter in a home directory on this machine")
    interpreter = found[0]
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--python", interpreter)

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and "home directory" in result.stderr, result.stderr
    assert tree(system_root) == before


@pytest.mark.parametrize(
    ("python", "named"),
    [("relative/python3", "is not an absolute path"), ("/nonexistent/python3", "does not exist")],
)
def test_it_rejects_a_bad_python_option_and_changes_nothing(system_root, python, named):
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--python", python)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and f"'{python}'" in result.stderr and named in result.stderr
    assert tree(system_root) == before


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
    state = system_root / STATE_DIR
    (state / "batch_tracker.json").write_text("{}")

    result = run_installer("--root", str(system_root), "--uninstall")

    assert result.returncode == 0, result.stdout + result.stderr
    after = tree(system_root)
    kept = {
        # settings, stage list, state and the user stay; everything else the install added is gone
        "etc/batch-completion-monitor",
        ENV_FILE,
        STAGES_FILE,
        STATE_DIR,
        f"{STATE_DIR}/batch_tracker.json",
        LOGS_DIR,
        *(f"etc/{name}" for name in ("passwd", "group", "shadow", "gshadow", ".pwd.lock")),
    }
    assert set(after) - set(before) == kept
    assert {path: after[path] for path in before} == before
    assert env_file.read_text().endswith("ALERT_EMAIL_TO=oncall@example.com\n")
    assert "kept: /etc/batch-completion-monitor/batch-completion-monitor.env" in result.stdout
    assert "kept: /var/lib/batch-completion-monitor" in result.stdout
    assert not (system_root / CLI_WRAPPER).exists() and not (system_root / NIGHTLY_WRAPPER).exists()


def test_it_refuses_to_run_without_root_and_changes_nothing(reachable_dir):
    watched = [Path("/opt/batch-completion-monitor"), Path("/etc/batch-completion-monitor"), Path("/etc/sysusers.d")]
    watched += [Path("/etc/systemd/system") / unit for unit in UNITS]
    before = [(path, path.exists()) for path in watched]
    unit_dir_before = sorted(os.listdir("/etc/systemd/system")) if os.path.isdir("/etc/systemd/system") else []

    # nobody runs a copy it can reach: the checkout may sit in a directory only root can enter.
    copy = copy_for_other_users(reachable_dir, "bin") / "bin" / INSTALLER.name
    result = run_installer(installer=copy, user="nobody") if IS_ROOT else run_installer()

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
    assert "ExecStart=/srv/batch-monitor/.venv/bin/batch-completion-monitor\n" in monitor_unit
    nightly_unit = (system_root / UNIT_DIR / "nightly-batch@.service").read_text()
    assert "ExecStart=/srv/batch-monitor/bin/run_nightly.sh --%i\n" in nightly_unit
    assert "/opt/batch-completion-monitor" not in monitor_unit
    assert (system_root / "srv/batch-monitor/bin/run_nightly.sh").is_file()
    assert not (system_root / PREFIX).exists()

    # --uninstall finds the install directory from the installed unit.
    assert run_installer("--root", str(system_root), "--uninstall").returncode == 0
    assert not (system_root / "srv/batch-monitor").exists()


def old_unit(prefix: str = "/opt/batch-completion-monitor", resume: bool = False) -> str:
    """A nightly unit as an earlier version of the installer wrote it."""
    return (
        "[Unit]\nDescription=Nightly batch\n\n[Service]\nType=oneshot\n"
        f"ExecStart={prefix}/bin/run_nightly.sh{' --resume' if resume else ''}\nUser=batchmon\n"
    )


def test_it_replaces_the_nightly_units_of_an_earlier_install_with_the_template(system_root):
    units = system_root / UNIT_DIR
    (units / "nightly-batch.service").write_text(old_unit())
    (units / "nightly-batch-resume.service").write_text(old_unit(resume=True))
    (units / "nightly-batch.service.d").mkdir()
    (units / "nightly-batch.service.d" / "local.conf").write_text("[Service]\nReadWritePaths=/srv/leads\n")

    result = install(system_root)

    for unit in OLD_UNITS:
        assert not (units / unit).exists(), unit
        assert f"removed /etc/systemd/system/{unit} (replaced by nightly-batch@.service)" in result.stdout
    assert (units / "nightly-batch@.service").read_bytes() == (ROOT / "etc" / "nightly-batch@.service").read_bytes()
    # The operator's drop-ins are theirs to move: kept, and named in a warning.
    assert (units / "nightly-batch.service.d" / "local.conf").is_file()
    assert "nightly-batch.service.d (your drop-ins) no longer applies" in result.stderr


def test_it_leaves_a_nightly_unit_that_runs_another_program_in_place(system_root):
    foreign = system_root / UNIT_DIR / "nightly-batch.service"
    foreign.write_text(old_unit(prefix="/srv/other-pipeline"))

    result = install(system_root)
    assert run_installer("--root", str(system_root), "--uninstall").returncode == 0

    assert foreign.read_text() == old_unit(prefix="/srv/other-pipeline")
    assert "nightly-batch.service does not run /opt/batch-completion-monitor/bin/run_nightly.sh" in result.stderr


def test_it_leaves_the_timer_disabled_with_no_timer(system_root):
    install(system_root, "--no-timer")

    assert (system_root / UNIT_DIR / "multi-user.target.wants/batch-completion-monitor.service").is_symlink()
    assert not (system_root / UNIT_DIR / "timers.target.wants/nightly-batch.timer").exists()
    assert (system_root / UNIT_DIR / "nightly-batch.timer").is_file()


def test_it_verifies_the_units_before_changing_anything(system_root, tmp_path):
    source = copy_project(tmp_path / "checkout")
    broken = source / "etc" / "batch-completion-monitor.service"
    broken.write_text(broken.read_text().replace("WatchdogSec=30s", "WatchdogSec=soon"))
    before = tree(system_root)

    result = run_installer("--root", str(system_root), "--no-venv", installer=source / "bin" / INSTALLER.name)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "batch-completion-monitor.service:" in result.stderr and "soon" in result.stderr
    assert "nothing was changed" in result.stderr
    assert tree(system_root) == before


def test_it_prints_its_usage_with_help(reachable_dir):
    copy = copy_for_other_users(reachable_dir, "bin") / "bin" / INSTALLER.name
    result = run_installer("--help", installer=copy, user="nobody") if IS_ROOT else run_installer("--help")

    assert result.returncode == 0
    for option in ("--prefix DIR", "--root DIR", "--python PATH", "--no-venv", "--nightly-time HH:MM", "--uninstall"):
        assert option in result.stdout


# ----------------------------------------------------------------------------- on the installed machine


def guide_code_lines(language: str, start: str) -> list[str]:
    """Lines of the guide's ```language blocks that start with ``start``, verbatim."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith(start)]


@needs_root
@pytest.mark.slow  # shares the venv tree (a real venv and pip install, ~10-25 s)
def test_it_installs_a_batch_tracker_command_with_the_services_settings(venv_root, tmp_path):
    env_file = venv_root / ENV_FILE
    marker = tmp_path / "sourced"
    env_file.write_text(
        env_file.read_text()
        + "BATCH_COMPLETION_DEADLINE_HOUR=7\n"
        + 'BATCH_COMPLETION_DEADLINE_MINUTE = "30"\n'
        + "BATCH_COMPLETION_TIMEZONE=Europe/Berlin\n"
        + f"SITE_NOTE=$(touch {marker})\n"  # a value, never a command: the file is not shell
    )
    # The guide's command, verbatim (the test runs as root; sudo may not be installed).
    (command,) = guide_code_lines("bash", "sudo batch-tracker status --json")
    command = command.split("#")[0].strip().removeprefix("sudo ")

    result = run_in_installed_tree(venv_root, tmp_path / "overlay", f"PATH=/usr/local/bin:$PATH {command}")

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["next_deadline"]["timezone"] == "Europe/Berlin"
    assert status["next_deadline"]["local"][11:16] == "07:30"
    assert status["tracker"]["path"] == "/var/lib/batch-completion-monitor/batch_tracker.json"
    assert not marker.exists()


@needs_root
@pytest.mark.slow  # shares the venv tree (a real venv and pip install, ~10-25 s)
def test_it_runs_the_guides_cron_line_as_written_against_the_installed_tree(venv_root, tmp_path):
    (line,) = guide_code_lines("cron", "0 ")
    fields = line.split(None, 6)
    assert fields[5] == "root", line  # the command reads the root-only environment file, then drops to batchmon
    (venv_root / STAGES_FILE).write_text("fetch true\nscore echo scored $BATCH_STAGE\n")

    result = run_in_installed_tree(venv_root, tmp_path / "overlay", fields[6])

    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((venv_root / STATE_DIR / "batch_tracker.json").read_text())
    assert state["current"]["state"] == "completed", state
    assert state["current"]["expected_stages"] == ["fetch", "score"]
    uid, _ = user_ids(venv_root)
    assert (venv_root / STATE_DIR / "batch_tracker.json").stat().st_uid == uid
    (log,) = (venv_root / LOGS_DIR).glob("nightly_*.log")
    assert "scored score" in log.read_text()
    assert log.stat().st_uid == uid
