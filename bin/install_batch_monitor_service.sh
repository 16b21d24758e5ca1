#!/usr/bin/env bash
# Usage: sudo bin/install_batch_monitor_service.sh [OPTIONS]
#
# Installs, or upgrades in place, the batch completion monitor as a hardened
# systemd service: copies the project (bin utils etc docs pyproject.toml
# requirements README) to the install directory, creates its venv with the
# runtime dependencies only and installs the project into it (pip install -e:
# the code runs from the install directory, the venv gets the
# batch-completion-monitor and batch-tracker commands), installs the units
# (batch-completion-monitor.service, the template nightly-batch@.service with its
# instances nightly-batch@run and nightly-batch@resume, nightly-batch.timer;
# replacing the nightly-batch.service and nightly-batch-resume.service of older
# installs), the environment file
# /etc/batch-completion-monitor/batch-completion-monitor.env (mode 0600, never
# overwritten) and the service user batchmon (sysusers.d), the state and log
# directories, the operator commands /usr/local/bin/batch-tracker (the tracker
# CLI) and /usr/local/bin/batch-nightly (bin/run_nightly.sh), which run with the
# services' environment file and user, enables the monitor and the nightly
# timer, and (re)starts the monitor when systemd is running.
# Every unit is checked with systemd-analyze verify before anything changes.
# Running it again with the same options changes nothing.
#
#   --prefix DIR             install directory (default /opt/batch-completion-monitor)
#   --root DIR               install into DIR as if it were / (image builds, tests):
#                            nothing is started, no running systemd is needed
#   --python PATH            interpreter of the venv (default /usr/bin/python3); it must be
#                            one the service user can run, outside /root and /home
#                            (the units hide home directories): not a pyenv/asdf shim
#   --no-venv                do not create or update PREFIX/.venv (provide it yourself)
#   --no-timer               leave nightly-batch.timer disabled (the batch runs from cron)
#   --nightly-time HH:MM     start time of the nightly batch (writes a timer drop-in;
#                            default 01:00, kept across upgrades)
#   --nightly-timezone ZONE  its IANA time zone (default America/New_York)
#   --uninstall              remove what the installer added; keeps the environment
#                            file, the stages file, the state and log directories and
#                            the user (and says so)
#   -h, --help               show this text
#
# Exit codes: 0 done; 2 bad usage, not root, an install directory that is not
# ours, or an interpreter the service user cannot run (nothing changed); 3 a
# unit failed systemd-analyze verify (nothing changed); 4 installed, but the
# monitor did not start (see journalctl); other: the failing step's code.
set -euo pipefail
# Installed files must be readable by the service user whatever root's umask is (the
# environment file gets its own 0600).
umask 022

readonly EXIT_USAGE=2 EXIT_INVALID=3 EXIT_NOT_STARTED=4
readonly DEFAULT_PREFIX=/opt/batch-completion-monitor
readonly SERVICE_USER=batchmon
readonly MONITOR_UNIT=batch-completion-monitor.service
readonly TIMER_UNIT=nightly-batch.timer
readonly NIGHTLY_TEMPLATE=nightly-batch@.service
readonly UNITS=(batch-completion-monitor.service "$NIGHTLY_TEMPLATE" nightly-batch.timer)
# What systemctl stops on --uninstall: the monitor, the timer and any running nightly instance.
readonly RUNNING_UNITS=(batch-completion-monitor.service nightly-batch.timer 'nightly-batch@*.service')
# Units of earlier versions that the template replaced (removed when they run our runner).
readonly OLD_UNITS=(nightly-batch.service nightly-batch-resume.service)
# What is copied to the install directory (.venv, data, logs, .git are not).
readonly PROJECT_ITEMS=(bin utils etc docs pyproject.toml requirements.txt README.md)
readonly MARKER=.batch-completion-monitor-install
readonly CONF_DIR=/etc/batch-completion-monitor
readonly ENV_FILE=$CONF_DIR/batch-completion-monitor.env
readonly STAGES_FILE=$CONF_DIR/nightly_stages.conf
readonly SYSUSERS_FILE=/etc/sysusers.d/batch-completion-monitor.conf
readonly UNIT_DIR=/etc/systemd/system
readonly TIMER_DROPIN=$UNIT_DIR/nightly-batch.timer.d/schedule.conf
readonly STATE_DIR=/var/lib/batch-completion-monitor
readonly LOGS_DIR=/var/log/batch-completion-monitor
readonly DEFAULT_PYTHON=/usr/bin/python3
# Operator commands: the tracker CLI and the runner with the services' settings and user.
readonly CLI_WRAPPER=/usr/local/bin/batch-tracker
readonly NIGHTLY_WRAPPER=/usr/local/bin/batch-nightly
readonly WRITTEN_BY="Written by install_batch_monitor_service.sh"
me=install_batch_monitor_service.sh

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { # die CODE MESSAGE: one-line error on stderr
  printf '%s: error: %s\n' "$me" "$2" >&2
  exit "$1"
}
say() { printf '%s: %s\n' "$me" "$*"; }
regex_quote() { printf '%s' "$1" | sed 's/[][\.*^$|]/\\&/g'; } # regex_quote TEXT: TEXT as a literal sed regex
warn() { printf '%s: warning: %s\n' "$me" "$*" >&2; }

# ----------------------------------------------------------------------------- arguments

root="" prefix="" venv=true timer=true uninstall=false nightly_time="" nightly_zone="" python=""
need_value() { # need_value OPTION [VALUE...]: fail unless OPTION is followed by a non-empty value
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$EXIT_USAGE" "option $1 needs a value (see --help)"; fi
}
while [ "$#" -gt 0 ]; do
  case "$1" in
    --prefix) need_value "$@"; prefix=$2; shift ;;
    --prefix=*) prefix=${1#*=} ;;
    --root) need_value "$@"; root=$2; shift ;;
    --root=*) root=${1#*=} ;;
    --nightly-time) need_value "$@"; nightly_time=$2; shift ;;
    --nightly-time=*) nightly_time=${1#*=} ;;
    --nightly-timezone) need_value "$@"; nightly_zone=$2; shift ;;
    --nightly-timezone=*) nightly_zone=${1#*=} ;;
    --python) need_value "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --no-venv) venv=false ;;
    --no-timer) timer=false ;;
    --uninstall) uninstall=true ;;
    -h | --help) usage; exit 0 ;;
    *) die "$EXIT_USAGE" "unknown argument '$1' (allowed: --prefix DIR, --root DIR, --python PATH, --no-venv, --no-timer, --nightly-time HH:MM, --nightly-timezone ZONE, --uninstall, --help)" ;;
  esac
  shift
done

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "$EXIT_USAGE" "must run as root (use sudo), or with --root DIR to install into a directory tree"
fi
if [ -n "$root" ]; then
  [ -d "$root" ] || die "$EXIT_USAGE" "--root '$root' is not a directory"
  root=$(cd "$root" && pwd -P)
  [ "$root" != / ] || root=""
fi
checked_prefix() { # checked_prefix DIR: DIR normalized, or exit 2 unless it can be an install directory of its own
  local dir=$1
  case "$dir" in
    /*) ;;
    *) die "$EXIT_USAGE" "--prefix '$dir' is not an absolute path (e.g. /opt/batch-completion-monitor)" ;;
  esac
  dir=$(realpath -m -- "$dir")
  case "$dir" in
    / | /bin | /boot | /dev | /etc | /etc/* | /home | /lib* | /opt | /proc | /root | /run | /sbin | /srv | /sys | /tmp | /usr | /usr/* | /var | /var/lib | /var/log)
      die "$EXIT_USAGE" "--prefix '$dir' is a system directory (allowed: a directory of its own, e.g. /opt/batch-completion-monitor)" ;;
  esac
  [[ $dir != *[[:space:]\|\&\\]* ]] || die "$EXIT_USAGE" "--prefix '$dir' contains a space or one of | & \\ (not allowed in unit files)"
  printf '%s' "$dir"
}
if [ -n "$prefix" ]; then prefix=$(checked_prefix "$prefix"); fi
if $uninstall && { [ -n "$nightly_time" ] || [ -n "$nightly_zone" ] || [ -n "$python" ] || ! $venv || ! $timer; }; then
  die "$EXIT_USAGE" "--uninstall takes only --root and --prefix"
fi
if [ -n "$nightly_time" ] || [ -n "$nightly_zone" ]; then
  nightly_time=${nightly_time:-01:00}
  nightly_zone=${nightly_zone:-America/New_York}
  [[ $nightly_time =~ ^([01][0-9]|2[0-3]):[0-5][0-9]$ ]] ||
    die "$EXIT_USAGE" "--nightly-time '$nightly_time' is not a time of day (allowed: HH:MM, 00:00-23:59)"
  # The time zone is checked by systemd's own calendar parser below, where the zone database is.
  if ! [[ $nightly_zone =~ ^[A-Za-z0-9_+/-]{1,64}$ ]] || [ ! -f "/usr/share/zoneinfo/$nightly_zone" ]; then
    die "$EXIT_USAGE" "--nightly-timezone '$nightly_zone' is not an IANA time zone (e.g. America/New_York, Europe/Berlin, UTC)"
  fi
fi

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# systemd is "running" only for a real install on a booted system.
systemd_running=false
if [ -z "$root" ] && [ -d /run/systemd/system ]; then systemd_running=true; fi
systemctl_root=()
[ -z "$root" ] || systemctl_root=(--root="$root")

# ----------------------------------------------------------------------------- uninstall

installed_prefix() { # installed_prefix: the install directory named by the installed monitor unit
  local unit="$root$UNIT_DIR/$MONITOR_UNIT"
  [ -f "$unit" ] || return 0
  # Today's unit starts PREFIX/.venv/bin/batch-completion-monitor, older ones PREFIX/.venv/bin/python.
  sed -n 's|^ExecStart=\(/.*\)/\.venv/bin/[^/ ]*\( .*\)\{0,1\}$|\1|p' "$unit" | head -n 1
}

remove_old_units() { # remove_old_units: the units the template replaced, when they run this install's runner
  local unit
  for unit in "${OLD_UNITS[@]}"; do
    [ -f "$root$UNIT_DIR/$unit" ] || continue
    if ! grep -q "^ExecStart=$(regex_quote "$prefix")/bin/run_nightly\.sh" "$root$UNIT_DIR/$unit"; then
      warn "$UNIT_DIR/$unit does not run $prefix/bin/run_nightly.sh: left in place"
      continue
    fi
    if $systemd_running; then systemctl --quiet disable --now "$unit" 2>/dev/null || true; fi
    find "$root$UNIT_DIR" -maxdepth 2 -path "*.wants/$unit" -type l -delete 2>/dev/null || true
    rm -f "$root$UNIT_DIR/$unit"
    say "removed $UNIT_DIR/$unit (replaced by $NIGHTLY_TEMPLATE)"
    if [ -d "$root$UNIT_DIR/$unit.d" ]; then
      warn "$UNIT_DIR/$unit.d (your drop-ins) no longer applies: move it to $UNIT_DIR/$NIGHTLY_TEMPLATE.d"
    fi
  done
}

do_uninstall() {
  local found_prefix kept=() unit
  found_prefix=$(installed_prefix)
  prefix=$(checked_prefix "${prefix:-${found_prefix:-$DEFAULT_PREFIX}}")
  if $systemd_running; then
    systemctl --quiet disable "${UNITS[@]}" 2>/dev/null || true
    # Stops a running batch too: its program is about to be removed.
    systemctl stop "${RUNNING_UNITS[@]}" 2>/dev/null || true
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl "${systemctl_root[@]}" --quiet disable "${UNITS[@]}" 2>/dev/null || true
  fi
  for unit in "${UNITS[@]}"; do
    # The enablement symlinks, also when systemctl is missing or the unit files are gone.
    find "$root$UNIT_DIR" -maxdepth 2 -path "*.wants/$unit" -type l -delete 2>/dev/null || true
    rm -f "$root$UNIT_DIR/$unit"
  done
  if grep -qF "Written by $me" "$root$TIMER_DROPIN" 2>/dev/null; then rm -f "$root$TIMER_DROPIN"; fi
  for wrapper in "$CLI_WRAPPER" "$NIGHTLY_WRAPPER"; do
    if grep -qF "$WRITTEN_BY" "$root$wrapper" 2>/dev/null; then rm -f "$root$wrapper"; fi
  done
  remove_old_units
  rmdir "$root$UNIT_DIR/nightly-batch.timer.d" 2>/dev/null || true
  rm -f "$root$SYSUSERS_FILE"
  if [ -f "$root$prefix/$MARKER" ]; then
    rm -rf -- "$root$prefix"
    say "removed $prefix"
  elif [ -e "$root$prefix" ]; then
    warn "$prefix was not installed by this script (no $MARKER): left in place"
  fi
  if $systemd_running; then systemctl daemon-reload; fi
  say "removed the units (${UNITS[*]}), their enablement, $SYSUSERS_FILE, $CLI_WRAPPER and $NIGHTLY_WRAPPER"
  [ ! -e "$root$ENV_FILE" ] || kept+=("$ENV_FILE (your settings and secrets)")
  [ ! -e "$root$STAGES_FILE" ] || kept+=("$STAGES_FILE (your stage list)")
  [ ! -e "$root$STATE_DIR" ] || kept+=("$STATE_DIR (batch state, history, alert state, outbox)")
  [ ! -e "$root$LOGS_DIR" ] || kept+=("$LOGS_DIR (nightly logs)")
  if grep -q "^$SERVICE_USER:" "$root/etc/passwd" 2>/dev/null; then kept+=("user $SERVICE_USER (may still own files)"); fi
  for item in "${kept[@]}"; do say "kept: $item"; done
  if [ "${#kept[@]}" -gt 0 ]; then
    say "remove them by hand when no longer needed (rm -r, userdel $SERVICE_USER)"
  fi
}

if $uninstall; then
  do_uninstall
  exit 0
fi

# ----------------------------------------------------------------------------- checks before any change

prefix=${prefix:-$DEFAULT_PREFIX}
target="$root$prefix"
if [ -e "$target" ] && [ ! -f "$target/$MARKER" ] && [ -n "$(ls -A "$target" 2>/dev/null)" ]; then
  die "$EXIT_USAGE" "$target exists, is not empty and was not installed by this script (choose another --prefix)"
fi
for unit in "${UNITS[@]}"; do
  [ -f "$project_root/etc/$unit" ] || die 1 "$project_root/etc/$unit is missing from the project"
done

service_ids() { # service_ids: "UID GID" of the service user in the tree being installed, if it exists
  local entry
  entry=$(grep -m 1 "^$SERVICE_USER:" "$root/etc/passwd" 2>/dev/null || true)
  [ -z "$entry" ] || printf '%s %s' "$(cut -d: -f3 <<<"$entry")" "$(cut -d: -f4 <<<"$entry")"
}

check_python() { # check_python PATH: exit 2 unless the service user can run PATH and build a venv with it
  local py=$1 ids real home_dir path
  local -a run_as
  case "$py" in
    /*) ;;
    *) die "$EXIT_USAGE" "--python '$py' is not an absolute path (e.g. $DEFAULT_PYTHON)" ;;
  esac
  if [ ! -f "$py" ] || [ ! -x "$py" ]; then
    die "$EXIT_USAGE" "python '$py' does not exist or is not executable (install python3 python3-venv, or give --python PATH)"
  fi
  # The units hide home directories (ProtectHome=): an interpreter, or a standard library,
  # under /root or /home (pyenv, asdf, conda) cannot start there, whatever its mode.
  real=$(realpath -e -- "$py")
  home_dir=$("$py" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))' 2>/dev/null) ||
    die "$EXIT_USAGE" "python '$py' does not run"
  for path in "$real" "$home_dir"; do
    case "$path" in
      /root | /root/* | /home | /home/* | /run/user/*)
        die "$EXIT_USAGE" "python '$py' lives in a home directory ($path), which the service cannot see (allowed: a system interpreter such as $DEFAULT_PYTHON; give it with --python PATH)" ;;
    esac
  done
  # Run it as the service user (as nobody while that user does not exist yet): the venv's
  # python is a symlink to it, so the service needs search and execute permission on its path.
  ids=$(service_ids)
  if [ -n "$ids" ]; then run_as=(--reuid="${ids% *}" --regid="${ids#* }"); else run_as=(--reuid=65534 --regid=65534); fi
  if command -v setpriv >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    # shellcheck disable=SC2016 # $1 is the inner shell's argument
    setpriv "${run_as[@]}" --clear-groups -- /bin/sh -c 'test -x "$1" && exec "$1" -c "import sys"' sh "$py" >/dev/null 2>&1 ||
      die "$EXIT_USAGE" "python '$py' cannot be run by the service user $SERVICE_USER (check the permissions of its directories, or give another with --python PATH)"
  fi
  "$py" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    die "$EXIT_USAGE" "python '$py' cannot create a venv (Debian: apt-get install python3-venv)"
}

if $venv; then
  python=${python:-$DEFAULT_PYTHON}
  check_python "$python"
elif [ -n "$python" ]; then
  die "$EXIT_USAGE" "--python and --no-venv exclude each other (--python names the venv's interpreter)"
fi

staging=$(mktemp -d "${TMPDIR:-/tmp}/batch-monitor-install.XXXXXX")
trap 'rm -rf -- "$staging"' EXIT

# Units with the install directory substituted (the shipped files name $DEFAULT_PREFIX).
mkdir -p "$staging/units" "$staging/app" "$staging/verify"
for unit in "${UNITS[@]}"; do
  sed "s|$(regex_quote "$DEFAULT_PREFIX")|$prefix|g" "$project_root/etc/$unit" >"$staging/units/$unit"
done
if [ -n "$nightly_time" ]; then
  calendar="*-*-* $nightly_time:00 $nightly_zone"
  if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze calendar "$calendar" >/dev/null 2>&1 ||
      die "$EXIT_USAGE" "systemd rejects the schedule '$calendar' (check --nightly-time and --nightly-timezone)"
  fi
  printf '%s\n' "# Written by $me --nightly-time $nightly_time --nightly-timezone $nightly_zone" \
    "[Timer]" "OnCalendar=" "OnCalendar=$calendar" >"$staging/schedule.conf"
fi

# requirements.txt holds the runtime dependencies only (the test tools are in requirements-test.txt,
# pyproject.toml's "test" extra, which the service's venv never gets).
if $venv && { [ ! -s "$project_root/requirements.txt" ] || [ ! -s "$project_root/pyproject.toml" ]; }; then
  die 1 "no runtime requirements found ($project_root/requirements.txt, $project_root/pyproject.toml)"
fi

# The project as it will be installed: no caches, normalized modes.
items=()
for item in "${PROJECT_ITEMS[@]}"; do [ ! -e "$project_root/$item" ] || items+=("$item"); done
tar -C "$project_root" --exclude=__pycache__ --exclude='*.pyc' -cf - "${items[@]}" | tar -C "$staging/app" --no-same-owner -xf -
chmod -R u=rwX,go=rX "$staging/app"
printf '%s\n' "Installed by bin/install_batch_monitor_service.sh; remove with its --uninstall." >"$staging/app/$MARKER"

# systemd-analyze verify needs the programs the units start to exist: verify copies in
# which the install directory points at the staged project, and the venv's interpreter
# (not created yet) at the chosen python (or /bin/sh), its console scripts at stand-ins
# in the staging directory. Everything else is checked as installed.
if command -v systemd-analyze >/dev/null 2>&1; then
  stand_in_python=${python:-/bin/sh}
  while IFS= read -r program; do
    install -D -m 0755 /dev/null "$staging/app/.venv/bin/$program"
  done < <(sed -n "s|^ExecStart=[-@:+!]*$(regex_quote "$prefix")/\.venv/bin/\([^ ]*\).*|\1|p" "$staging"/units/* | sort -u)
  for unit in "${UNITS[@]}"; do
    sed -e "s|$(regex_quote "$prefix/.venv/bin/python")|$stand_in_python|g" -e "s|$(regex_quote "$prefix")|$staging/app|g" \
      "$staging/units/$unit" >"$staging/verify/$unit"
  done
  verify_units=()
  for unit in "${UNITS[@]}"; do verify_units+=("$staging/verify/$unit"); done
  # Fails on a non-zero status, and on any message about our units (warnings such as an
  # unknown directive do not change the status); messages about the host's units do not count.
  verify_status=0
  verify_output=$(systemd-analyze verify "${verify_units[@]}" 2>&1) || verify_status=$?
  ours=(-e "$staging")
  # (A template is reported by its test instance, e.g. nightly-batch@i.service: match its prefix.)
  for unit in "${UNITS[@]}"; do ours+=(-e "${unit%%@*}"); done
  if [ "$verify_status" -ne 0 ] || grep -qF "${ours[@]}" <<<"$verify_output"; then
    printf '%s\n' "$verify_output" | sed "s|$staging/verify/||g; s|$staging/app|$prefix|g" >&2
    die "$EXIT_INVALID" "systemd-analyze verify rejected the units (above); nothing was changed"
  fi
else
  warn "systemd-analyze not found: the units are installed without verification"
fi

# ----------------------------------------------------------------------------- install

# The project: each item swapped in whole (renames within one directory), so a removed
# file does not linger and the venv, data and logs in the install directory stay.
mkdir -p "$target"
for item in "${PROJECT_ITEMS[@]}" "$MARKER"; do
  if [ -e "$staging/app/$item" ]; then
    rm -rf -- "$target/.$item.new" "$target/.$item.old"
    cp -a "$staging/app/$item" "$target/.$item.new"
    if [ -e "$target/$item" ]; then mv -T "$target/$item" "$target/.$item.old"; fi
    mv -T "$target/.$item.new" "$target/$item"
    rm -rf -- "$target/.$item.old"
  else
    rm -rf -- "${target:?}/$item"
  fi
done
chmod 0755 "$target"
say "installed the project into $prefix"

if $venv; then
  # Rebuilt when broken or made from another interpreter (e.g. an earlier install's pyenv shim).
  if [ ! -x "$target/.venv/bin/python" ] || ! "$target/.venv/bin/python" -c 'import sys' 2>/dev/null ||
    [ "$(readlink -f -- "$target/.venv/bin/python")" != "$(readlink -f -- "$python")" ]; then
    rm -rf -- "$target/.venv"
    "$python" -m venv "$target/.venv" ||
      die 1 "could not create $prefix/.venv with $python (Debian: apt-get install python3-venv)"
  fi
  # The runtime dependencies only (the test and lint tools stay out of the service's venv), then
  # the project itself, without extras: editable, so the code runs from the install directory
  # (one copy; relative settings keep meaning the install directory) and the venv gets the
  # console scripts the units start. Not compiled by pip (timestamped .pyc files would differ
  # from run to run): the byte-compile step below does it reproducibly.
  pip_install=("$target/.venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip_install[@]}" -r "$target/requirements.txt"
  # compat mode: a plain path in a .pth file, not an import hook that costs every start (the hooks').
  "${pip_install[@]}" --no-deps --no-compile --editable "$target" --config-settings editable_mode=compat
  # setuptools leaves its build metadata in the source tree: not part of the install.
  rm -rf -- "$target"/*.egg-info "$target/build"
  if [ -n "$root" ]; then
    # Scripts and the import hook pip wrote name the venv and the project through $root; inside
    # the image it is $prefix. (A second run finds none: grep's "no match" must not end the
    # script under pipefail. Text files only: a .pyc is no place for sed.)
    while IFS= read -r file; do
      sed -i "s|$(regex_quote "$root$prefix")|$prefix|g" "$file"
    done < <(grep -rlIF -- "$root$prefix" "$target/.venv/bin" "$target/.venv/pyvenv.cfg" "$target/.venv/lib" 2>/dev/null || true)
    # The project's RECORD (the file list pip uninstalls by) gets the rewritten files' hashes,
    # so it no longer depends on where the tree was built.
    "$target/.venv/bin/python" - "$target"/.venv/lib/python*/site-packages/batch_completion_monitor-*.dist-info/RECORD <<'RECORD_FIX'
import base64, csv, hashlib, io, pathlib, sys
for record in map(pathlib.Path, sys.argv[1:]):
    rows = list(csv.reader(io.StringIO(record.read_text())))
    for row in rows:
        path = record.parent.parent / row[0]
        if row[1] and path.is_file():
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            row[1:3] = [f"sha256={digest}", str(len(data))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue())
RECORD_FIX
  fi
  say "venv ready: $prefix/.venv ($("$target/.venv/bin/python" --version 2>&1))"
elif [ ! -x "$target/.venv/bin/python" ]; then
  warn "--no-venv: $prefix/.venv/bin/python does not exist; create it (pip install -r $prefix/requirements.txt -e $prefix) before the services start"
fi
if [ -x "$target/.venv/bin/python" ] && "$target/.venv/bin/python" -c 'import sys' 2>/dev/null; then
  # Byte-compiled once here: the services cannot write the install directory, and the
  # nightly hooks' start-up time matters. Hash-checked .pyc files do not depend on mtimes,
  # and a fixed hash seed makes them byte-identical from run to run (set constants). The
  # file names they record are the installed ones (tracebacks), without --root's directory.
  strip_root=()
  [ -z "$root" ] || strip_root=(-s "$root" -p /)
  # The editable install's import hook (site-packages/__editable__*.py) runs at every start.
  import_hooks=()
  for file in "$target"/.venv/lib/python*/site-packages/__editable__*.py; do [ ! -f "$file" ] || import_hooks+=("$file"); done
  PYTHONHASHSEED=0 "$target/.venv/bin/python" -m compileall -q --invalidation-mode checked-hash "${strip_root[@]}" \
    "$target/bin" "$target/utils" "${import_hooks[@]}" >/dev/null
fi

# Units, and the schedule drop-in when one was asked for (an existing one is kept).
mkdir -p "$root$UNIT_DIR"
remove_old_units
for unit in "${UNITS[@]}"; do
  install -m 0644 "$staging/units/$unit" "$root$UNIT_DIR/$unit"
done
if [ -n "$nightly_time" ]; then
  install -D -m 0644 "$staging/schedule.conf" "$root$TIMER_DROPIN"
  say "nightly batch scheduled at $nightly_time $nightly_zone ($TIMER_DROPIN)"
elif [ -f "$root$TIMER_DROPIN" ]; then
  say "kept the schedule in $TIMER_DROPIN ($(sed -n 's/^OnCalendar=\(..*\)/\1/p' "$root$TIMER_DROPIN"))"
fi
say "installed the units into $UNIT_DIR: ${UNITS[*]}"

# Configuration: created once, never overwritten (it holds the site's settings and secrets).
[ -d "$root$CONF_DIR" ] || install -d -m 0755 "$root$CONF_DIR"
if [ -e "$root$ENV_FILE" ]; then
  say "kept $ENV_FILE (compare with $prefix/etc/batch-completion-monitor.env.example for new settings)"
else
  # The example, plus what the alert e-mails should tell on-call on this machine.
  {
    cat "$project_root/etc/batch-completion-monitor.env.example"
    printf '%s\n' "" "# --------------------------------------------------------------- $WRITTEN_BY" \
      "# Commands the alert e-mails give on-call, and where the nightly logs are." \
      "BATCH_CLI_COMMAND=sudo $CLI_WRAPPER" \
      "BATCH_RUN_COMMAND=sudo systemctl start nightly-batch@run" \
      "BATCH_RESUME_COMMAND=sudo systemctl start nightly-batch@resume" \
      "LOG_DIR=$LOGS_DIR"
  } >"$staging/env"
  install -m 0600 "$staging/env" "$root$ENV_FILE"
  say "created $ENV_FILE (mode 0600): set ALERT_EMAIL_TO and SMTP_SERVER there"
fi
# The stage list (nightly-batch@.service reads it from here, so upgrades keep it): the
# checkout's own etc/nightly_stages.conf when it has one, else the commented example.
for stages_source in etc/nightly_stages.conf etc/nightly_stages.conf.example; do
  if [ ! -e "$root$STAGES_FILE" ] && [ -f "$project_root/$stages_source" ]; then
    install -m 0644 "$project_root/$stages_source" "$root$STAGES_FILE"
    say "created $STAGES_FILE from $stages_source: put your pipeline's stage commands there"
  fi
done
[ -e "$root$STAGES_FILE" ] || warn "$STAGES_FILE does not exist: write your stage list there before the nightly batch runs"

# The service user (systemd-sysusers.service also creates it at boot from the same file).
install -D -m 0644 "$project_root/etc/sysusers.d/batch-completion-monitor.conf" "$root$SYSUSERS_FILE"
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers "${systemctl_root[@]}" "$root$SYSUSERS_FILE" >/dev/null 2>&1 ||
    warn "systemd-sysusers could not create user $SERVICE_USER; it is created at boot from $SYSUSERS_FILE"
elif ! grep -q "^$SERVICE_USER:" "$root/etc/passwd" 2>/dev/null; then
  useradd_root=()
  [ -z "$root" ] || useradd_root=(--prefix "$root")
  useradd "${useradd_root[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "Batch completion monitor and nightly batch" "$SERVICE_USER"
fi
say "service user: $SERVICE_USER"

# State and log directories (systemd creates them too, but the operator commands and a
# cron-driven batch may run before any unit has). Existing ones are left as they are.
ids=$(service_ids)
for directory in "$STATE_DIR" "$LOGS_DIR"; do
  if [ ! -e "$root$directory" ]; then
    if [ -n "$ids" ]; then
      install -d -m 0750 -o "${ids% *}" -g "${ids#* }" "$root$directory"
    else
      warn "user $SERVICE_USER does not exist yet: $directory is created at the first start of a unit"
    fi
  fi
done

# The operator commands: the tracker CLI and the runner with the services' settings.
write_wrapper() { # write_wrapper PATH PROGRAM PURPOSE: install a command that runs PROGRAM like the units do
  local path=$1 program=$2 purpose=$3
  if [ -e "$root$path" ] && ! grep -qF "$WRITTEN_BY" "$root$path"; then
    warn "$path exists and was not written by this script: left in place"
    return 0
  fi
  {
    printf '#!/bin/bash\n'
    printf '# Usage: sudo %s [ARGS]: %s\n' "${path##*/}" "$purpose"
    printf '# %s (rewritten on upgrade, removed with --uninstall).\n' "$WRITTEN_BY"
    printf '#\n'
    printf "# Runs %s as the units do: a clean environment with the units' defaults,\n" "$prefix/$program"
    printf "# then %s read like systemd's\n" "$ENV_FILE"
    printf '# EnvironmentFile= (NAME=value lines, never run as shell code), as user %s.\n' "$SERVICE_USER"
    printf "# Run it as root: the file is root's (mode 0600). Exit codes: the program's; 2 unreadable file.\n"
    printf 'set -euo pipefail\n'
    printf 'readonly ENV_FILE=%q PROGRAM=%q SERVICE_USER=%q\n' "$ENV_FILE" "$prefix/$program" "$SERVICE_USER"
    printf 'environment=(%q %q %q %q %q %q %q)\n' \
      "PATH=$prefix/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=$STATE_DIR" \
      "BATCH_TRACKER_FILE=$STATE_DIR/batch_tracker.json" "BATCH_OUTBOX_DIR=$STATE_DIR/outbox" \
      "NIGHTLY_STAGES_FILE=$STAGES_FILE" "LOG_DIR=$LOGS_DIR" "LANG=C.UTF-8"
    cat <<'WRAPPER_BODY'
me=${0##*/}
umask 0027 # UMask= of the nightly units: state and logs private to the service user's group
if [ -e "$ENV_FILE" ]; then
  [ -r "$ENV_FILE" ] || { printf '%s: error: cannot read %s (run with sudo)\n' "$me" "$ENV_FILE" >&2; exit 2; }
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"
    line="${line%"${line##*[![:space:]]}"}"
    case "$line" in '' | '#'* | ';'*) continue ;; esac
    if [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
      name=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
      # One pair of surrounding quotes is removed, as systemd does.
      if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
      environment+=("$name=$value")
    else
      printf '%s: warning: %s: ignored a line that is not NAME=value: %s\n' "$me" "$ENV_FILE" "$line" >&2
    fi
  done <"$ENV_FILE"
fi
# Files the program writes must belong to the service user, as when a unit runs it.
if [ "$(id -u)" -eq 0 ]; then
  exec setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups -- env -i "${environment[@]}" "$PROGRAM" "$@"
fi
exec env -i "${environment[@]}" "$PROGRAM" "$@"
WRAPPER_BODY
  } >"$staging/wrapper"
  install -D -m 0755 "$staging/wrapper" "$root$path"
}
write_wrapper "$CLI_WRAPPER" bin/batch_tracker "the tracker CLI (status, check, history, hooks) with the services' settings"
write_wrapper "$NIGHTLY_WRAPPER" bin/run_nightly.sh "the nightly batch (bin/run_nightly.sh [--resume] [--dry-run]), e.g. from cron"
say "operator commands: $CLI_WRAPPER (tracker CLI), $NIGHTLY_WRAPPER (nightly batch), with the services' settings"

# Enablement: systemctl edits the symlinks itself when systemd is not running (and with --root).
enable_units=("$MONITOR_UNIT")
if $timer; then enable_units+=("$TIMER_UNIT"); fi
if $systemd_running; then systemctl daemon-reload; fi
# (With --root, systemctl warns that multi-user.target and timers.target do not exist in
# the tree; only a failure is worth showing.)
enable_output=$(systemctl "${systemctl_root[@]}" --quiet enable "${enable_units[@]}" 2>&1) ||
  die 1 "systemctl enable ${enable_units[*]} failed: $enable_output"
if ! $timer; then
  if $systemd_running; then systemctl --quiet disable --now "$TIMER_UNIT" 2>/dev/null || true; else
    systemctl "${systemctl_root[@]}" --quiet disable "$TIMER_UNIT" 2>/dev/null || true
  fi
  say "$TIMER_UNIT left disabled (--no-timer)"
fi
say "enabled: ${enable_units[*]}"

if ! $systemd_running; then
  say "systemd is not running here${root:+ (--root $root)}: nothing started; the units start at boot"
  exit 0
fi
if $timer; then systemctl start "$TIMER_UNIT"; fi
if ! systemctl restart "$MONITOR_UNIT"; then
  die "$EXIT_NOT_STARTED" "installed, but $MONITOR_UNIT did not start: journalctl -u $MONITOR_UNIT -n 50"
fi
say "$MONITOR_UNIT (re)started; status: systemctl status $MONITOR_UNIT"
