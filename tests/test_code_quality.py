"""The project's own static checks: the lint step of CI (.ci/run runs ``pytest -m lint`` before
the tests; setup.cfg leaves them out of the plain test run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lint

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _shell_scripts() -> list[str]:
    scripts = [
        p for p in (ROOT / "bin").iterdir() if p.is_file() and p.read_bytes()[:40].startswith(b"#!/usr/bin/env bash")
    ]
    scripts += [ROOT / ".ci" / "run"]
    scripts += sorted((ROOT / "etc").rglob("*.sh")) + sorted((ROOT / "bench").rglob("*.sh"))
    return [str(p.relative_to(ROOT)) for p in scripts]


def test_it_passes_ruff_check():
    result = _run(str(VENV_BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_is_ruff_formatted():
    result = _run(str(VENV_BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_passes_bandit():
    result = _run(str(VENV_BIN / "bandit"), "-q", "-c", "pyproject.toml", "-r", "utils", "bin")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_has_shellcheck_clean_scripts():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed; bin/setup.sh --test installs it")
    scripts = _shell_scripts()
    assert "bin/run_nightly.sh" in scripts
    result = _run("shellcheck", "-x", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_starts_every_shell_script_with_strict_mode():
    for script in _shell_scripts():
        text = (ROOT / script).read_text()
        assert "set -euo pipefail" in text, f"{script} lacks set -euo pipefail"
