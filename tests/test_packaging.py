"""Packaging: pyproject.toml's [project] table, the requirements files, and the editable install.

bin/setup.sh installs the project into .venv (pip install -e .), the service installer into
the service's venv (runtime only): `import utils` then works from any directory, with no
sys.path edits and no PYTHONPATH.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def requirement_lines(name: str) -> list[str]:
    """The requirement specifiers of a requirements file: no comments, no -r includes, no spaces."""
    lines = []
    for raw in (PROJECT_ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line.replace(" ", ""))
    return lines


def normalized(specifiers: list[str]) -> list[str]:
    """Specifiers with their names normalized as pip does (PEP 503), sorted."""
    result = []
    for specifier in specifiers:
        name, rest = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$", specifier.replace(" ", "")).groups()
        result.append(re.sub(r"[-_.]+", "-", name).lower() + rest)
    return sorted(result)


def test_it_declares_the_runtime_dependencies_of_requirements_txt():
    assert normalized(PYPROJECT["project"]["dependencies"]) == normalized(requirement_lines("requirements.txt"))
    assert normalized(PYPROJECT["project"]["dependencies"]) == ["prometheus-client>=0.20,<1", "pytz>=2024.1"]


def test_it_declares_the_test_tools_of_requirements_test_txt_as_the_test_extra():
    assert "-r requirements.txt" in (PROJECT_ROOT / "requirements-test.txt").read_text().splitlines()
    test_extra = normalized(PYPROJECT["project"]["optional-dependencies"]["test"])

    assert test_extra == normalized(requirement_lines("requirements-test.txt"))
    assert {"pytest", "playwright", "ruff", "bandit"} <= {re.split(r"[<>=!~]", s)[0] for s in test_extra}
    # The runtime never pulls in a test tool.
    assert not set(test_extra) & set(normalized(PYPROJECT["project"]["dependencies"]))


def test_it_declares_the_package_python_and_console_scripts():
    project = PYPROJECT["project"]

    assert project["name"] == "batch-completion-monitor"
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"] == {
        "batch-tracker": "utils.tracker_cli:run",
        "batch-completion-monitor": "utils.service:main",
    }
    assert PYPROJECT["tool"]["setuptools"]["packages"] == ["utils"]
    for target in project["scripts"].values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_it_keeps_the_ruff_configuration():
    assert PYPROJECT["tool"]["ruff"]["line-length"] == 120
    assert "S" in PYPROJECT["tool"]["ruff"]["lint"]["select"]


def test_it_imports_the_installed_project_from_any_directory_without_pythonpath(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    result = subprocess.run(
        [sys.executable, "-P", "-c", "import utils.batch_tracker as m; print(m.__file__)"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == PROJECT_ROOT / "utils" / "batch_tracker.py"  # editable: the checkout


def test_it_installs_the_console_scripts_into_the_venv():
    venv_bin = Path(sys.executable).parent
    for script in PYPROJECT["project"]["scripts"]:
        path = venv_bin / script
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing: run bin/setup.sh"
        assert path.read_text().splitlines()[0] == f"#!{sys.executable}"


def test_it_edits_sys_path_nowhere_and_re_executes_into_no_venv():
    files = [PROJECT_ROOT / "tests" / "conftest.py", PROJECT_ROOT / "bench" / "run.py"]
    files += [p for p in (PROJECT_ROOT / "bin").iterdir() if p.is_file()]
    files += sorted((PROJECT_ROOT / "utils").glob("*.py"))
    offenders = []
    for path in files:
        text = path.read_text(errors="replace")
        if re.search(r"sys\.path(\[[^\]]*\]\s*=|\.insert|\.append)", text) or "os.execv" in text:
            offenders.append(str(path.relative_to(PROJECT_ROOT)))
    assert not offenders


def test_it_runs_the_lint_step_in_ci_before_the_readmes_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    (test_command,) = [line.split("#")[0].strip() for line in readme.splitlines() if "pytest -n 2" in line][:1]
    ci = (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()

    lint_step = next(i for i, line in enumerate(ci) if "pytest -m lint" in line and "test_code_quality.py" in line)
    assert ci.index(test_command) > lint_step  # the README's command, verbatim, after the lint step
    quality = (PROJECT_ROOT / "tests" / "test_code_quality.py").read_text()
    assert "pytestmark = pytest.mark.lint" in quality
    assert all(tool in quality for tool in ('"check"', '"format", "--check"', "bandit", "shellcheck"))
