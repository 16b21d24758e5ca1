#!/usr/bin/env bash
# Usage: bin/setup.sh [--test]
#
# Prepares a fresh checkout to run: creates .venv/ with requirements.txt (the
# runtime), installs the project into it editable (pip install -e .: `import utils`
# works from any directory, and .venv/bin gets the batch-tracker and
# batch-completion-monitor commands) and byte-compiles the code (the nightly hook's
# start-up time depends on it).
#
#   --test   also installs requirements-test.txt and the Debian packages the test
#            suite drives for real, when missing: prometheus + promtool,
#            prometheus-pushgateway, prometheus-alertmanager (+ amtool), the shell
#            linter, chromium, systemd-analyze, flock, libfaketime, and a system
#            python3 with venv (installer tests).
#            Needs root or sudo.
#
# Idempotent: re-running only installs what is missing (and refreshes the editable
# install, e.g. after pyproject.toml changed).
# Exit codes: 0 ready, 2 bad usage, other: the failing step's code.
set -euo pipefail

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }

with_test_tools=false
case "${1:-}" in
  "") ;;
  --test) with_test_tools=true ;;
  -h | --help) usage; exit 0 ;;
  *) echo "setup.sh: unknown option '$1' (allowed: --test, --help)" >&2; exit 2 ;;
esac

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project_root"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup.sh: need root or sudo to run: $*" >&2; return 1
  fi
}

if $with_test_tools; then
  # command -> Debian package that provides it
  declare -A package_for=(
    [promtool]=prometheus [prometheus]=prometheus [prometheus-pushgateway]=prometheus-pushgateway
    [prometheus-alertmanager]=prometheus-alertmanager [amtool]=prometheus-alertmanager
    [shellcheck]=shellcheck [chromium]=chromium [systemd-analyze]=systemd [flock]=util-linux
    [faketime]=faketime
  )
  missing=()
  for tool in "${!package_for[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package_for[$tool]}")
  done
  # The installer builds the service venv from the system interpreter, never a pyenv/asdf one.
  /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "setup.sh: installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    # Installing prometheus (or the alertmanager) tries to start its service; without a running systemd
    # that is skipped. The tests start their own instances, with their own config, on free ports.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
requirements="requirements.txt"
if $with_test_tools; then requirements="requirements-test.txt"; fi
# The dependency ranges, and the project itself (its import path and console scripts).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements" --editable . --config-settings editable_mode=compat
.venv/bin/python -m compileall -q utils bin >/dev/null
mkdir -p data logs
echo "setup.sh: ready (.venv/bin/python, $(.venv/bin/python --version))"
