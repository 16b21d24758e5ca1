#!/usr/bin/env bash
# Usage: bin/run_nightly.sh [--run | --resume] [--dry-run] [--help]
#
# Runs the nightly pipeline's stages in order and records the batch with the
# tracker (python -m utils.batch_tracker): "start --stages a,b,c"; per stage
# "stage NAME 0", the command, "stage NAME 100"; on a non-zero exit
# "fail --stage NAME --reason 'exit code N' --output-file -" (the stage's output from this
# run's log on stdin: the tracker keeps its last lines for the alert e-mail) and stop; after
# the last stage "end".
#
#   --run       start a new batch (the default; nightly-batch@run.service names it)
#   --resume    re-run the failed current batch from its failed stage, same batch id:
#               stages already at 100% are skipped (fatal, exit 2, if there is no failed batch)
#   --dry-run   print the plan (stages, commands, log, tracker and lock files); run and record nothing
#   -h, --help  show this text
#
# Stages file (NIGHTLY_STAGES_FILE, default etc/nightly_stages.conf): one "name command..." per
# line; blank lines and lines starting with # are ignored; names are 1-64 of A-Z a-z 0-9 _ . -
# Each command runs with bash -c in the project root, stdin from /dev/null, with BATCH_STAGE=<name>
# and NIGHTLY_BATCH_ID=<batch id> exported, so it can report progress itself:
#   bin/batch_tracker stage "$BATCH_STAGE" 40
#
# Environment (relative paths are relative to the project root, not the current directory):
#   NIGHTLY_STAGES_FILE   the stages file (etc/nightly_stages.conf)
#   LOG_DIR               log directory (logs): each run appends to $LOG_DIR/nightly_YYYYMMDD.log, the
#                         date being the UTC date the run started; every line (stage output included)
#                         is stamped with local ISO-8601 time and UTC offset, and echoed to stdout.
#                         It also holds the lock that allows one run at a time: $LOG_DIR/.run_nightly.lock
#   BATCH_TRACKER_FILE    the tracker file (data/batch_tracker.json)
#   BATCH_TRACKER_PYTHON  python for the tracker calls (.venv/bin/python if present, else python3)
#
# A failing tracker call is logged as a WARNING and the run goes on: monitoring must never break the
# job (the monitor alerts on the late or failed batch). SIGINT/SIGTERM/SIGHUP record the batch as
# failed ("interrupted by SIGTERM"); signal the process group (as Ctrl-C and systemd do) so that the
# running stage stops too.
#
# Exit codes: 0 all stages succeeded; N the failed stage's own exit code; 2 usage or configuration
# error, or nothing to resume (nothing recorded); 75 another run holds the lock; 128+n killed by signal n.
set -euo pipefail

readonly EXIT_USAGE=2 EXIT_LOCKED=75
readonly NAME_PATTERN='^[A-Za-z0-9_.-]{1,64}$'
readonly NAME_RULE='use 1-64 of A-Z a-z 0-9 _ . -'
me=run_nightly.sh

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
die_usage() { # die_usage MESSAGE: one-line error on stderr, exit 2 (nothing has been recorded)
  printf '%s: error: %s\n' "$me" "$1" >&2
  exit "$EXIT_USAGE"
}

resume=false dry_run=false mode=""
for arg in "$@"; do
  case "$arg" in
    --run | --resume)
      # The unit template passes its instance name as one of these: both at once is a mistake.
      [ -z "$mode" ] || [ "$mode" = "$arg" ] || die_usage "'$mode' and '$arg' exclude each other (a new batch, or the failed one resumed)"
      mode=$arg
      if [ "$arg" = --resume ]; then resume=true; fi
      ;;
    --dry-run) dry_run=true ;;
    -h | --help) usage; exit 0 ;;
    *) die_usage "unknown argument '$arg' (allowed: --run, --resume, --dry-run, --help)" ;;
  esac
done

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project_root"

trim() { # trim VALUE: VALUE without leading and trailing whitespace
  local value=$1
  value="${value#"${value%%[![:space:]]*}"}"
  printf '%s' "${value%"${value##*[![:space:]]}"}"
}

from_root() { # from_root PATH: PATH made absolute against the project root (~/ expanded)
  local path
  path=$(trim "$1")
  case "$path" in \~/*) path="$HOME/${path#\~/}" ;; esac
  case "$path" in /*) printf '%s' "$path" ;; *) printf '%s/%s' "$project_root" "$path" ;; esac
}

# ----------------------------------------------------------------------------- configuration

stages_file=$(from_root "${NIGHTLY_STAGES_FILE:-etc/nightly_stages.conf}")
log_dir=$(from_root "${LOG_DIR:-logs}")
tracker_file=$(from_root "${BATCH_TRACKER_FILE:-data/batch_tracker.json}")
log_day=$(date -u +%Y%m%d)
log_file="$log_dir/nightly_$log_day.log"
# Beside the logs rather than the tracker file: the lock must work even when the tracker's storage
# does not, and two pipelines sharing a LOG_DIR would share log files anyway.
lock_file="$log_dir/.run_nightly.lock"

if [ -n "${BATCH_TRACKER_PYTHON:-}" ]; then
  python=$BATCH_TRACKER_PYTHON
elif [ -x "$project_root/.venv/bin/python" ]; then
  python=$project_root/.venv/bin/python
else
  python=python3
fi
# Stage commands that call bin/batch_tracker use the same interpreter.
export BATCH_TRACKER_PYTHON="$python"

[ -e "$stages_file" ] || die_usage "stages file $stages_file not found (set NIGHTLY_STAGES_FILE, e.g. etc/nightly_stages.demo.conf)"
if [ ! -f "$stages_file" ] || [ ! -r "$stages_file" ]; then die_usage "stages file $stages_file is not a readable file"; fi

stage_names=() stage_commands=()
declare -A line_of_stage=()
line_number=0
while IFS= read -r line || [ -n "$line" ]; do
  line_number=$((line_number + 1))
  line=$(trim "${line%$'\r'}")
  case "$line" in "" | "#"*) continue ;; esac
  name=${line%%[[:space:]]*}
  command=$(trim "${line#"$name"}")
  where="$stages_file:$line_number"
  [[ $name =~ $NAME_PATTERN ]] || die_usage "$where: stage name '${name:0:80}' is not allowed ($NAME_RULE)"
  [ -z "${line_of_stage[$name]:-}" ] || die_usage "$where: stage '$name' is already defined on line ${line_of_stage[$name]}"
  [ -n "$command" ] || die_usage "$where: stage '$name' has no command (expected: name command...)"
  # A syntax error is a config error: refuse before the batch starts, not hours into it.
  if ! syntax_error=$(bash -n -c "$command" 2>&1); then
    syntax_error=${syntax_error%%$'\n'*}
    die_usage "$where: stage '$name' command is not valid bash (${syntax_error#bash: -c: })"
  fi
  line_of_stage[$name]=$line_number
  stage_names+=("$name")
  stage_commands+=("$command")
done <"$stages_file"
[ "${#stage_names[@]}" -gt 0 ] || die_usage "stages file $stages_file defines no stages (expected lines: name command...)"
stage_list=$(IFS=,; printf '%s' "${stage_names[*]}")

# ----------------------------------------------------------------------------- tracker calls

tracker_out=""
tracker_err_file=""
tracker_raw() { # tracker_raw ARGS...: run the tracker CLI; stdout in $tracker_out, stderr in $tracker_err_file
  # -c, not -m: runpy's imports would cost every hook about 4 ms (a third of what the tracker itself costs).
  "$python" -c 'from utils.tracker_cli import run; run()' "$@" 2>"$tracker_err_file"
}

completed_stages_of() { # completed_stages_of STATUS_JSON: names of the stages at 100%, one a line
  "$python" -c '
import json, sys
status = json.loads(sys.argv[1])
for stage in status.get("stages") or []:
    if (stage.get("percentage") or 0) >= 100:
        print(stage["name"])
' "$1"
}

expected_stages_of() { # expected_stages_of STATUS_JSON: the batch's declared stage list, comma separated
  "$python" -c '
import json, sys
print(",".join(json.loads(sys.argv[1]).get("expected_stages") or []))
' "$1"
}

# ----------------------------------------------------------------------------- dry run

if $dry_run; then
  echo "$me --dry-run: nothing is run or recorded"
  echo "stages file:  $stages_file"
  echo "tracker file: $tracker_file (tracker python: $python)"
  echo "log file:     $log_file"
  echo "lock file:    $lock_file"
  skip_list=""
  if $resume; then
    tracker_err_file=$(mktemp)
    trap 'rm -f "$tracker_err_file"' EXIT
    if tracker_out=$(tracker_raw status --json); then
      state=$("$python" -c 'import json, sys; s = json.loads(sys.argv[1]); print(s.get("id") or "-", s.get("state"))' "$tracker_out")
      echo "resume:       current batch ${state% *} is ${state##* }$([ "${state##* }" = failed ] || echo ' (not failed: --resume would exit 2)')"
      skip_list=$(completed_stages_of "$tracker_out")
    else
      echo "resume:       cannot read the tracker: $(cat "$tracker_err_file")"
    fi
  else
    echo "batch:        a new batch with stages $stage_list"
  fi
  echo "plan:"
  for index in "${!stage_names[@]}"; do
    name=${stage_names[$index]}
    if grep -qxF -- "$name" <<<"$skip_list"; then
      printf '  %d. %s  (skip: already at 100%%)\n' "$((index + 1))" "$name"
    else
      printf '  %d. %s: %s\n' "$((index + 1))" "$name" "${stage_commands[$index]}"
    fi
  done
  exit 0
fi

# ----------------------------------------------------------------------------- logging

stamp() { # stamp VAR: set VAR to now as local ISO-8601 time with milliseconds and UTC offset
  local _now=${EPOCHREALTIME:-} _secs _micros _clock _zone
  [ -n "$_now" ] || printf -v _now '%(%s)T.000000' -1
  _secs=${_now%%[!0-9]*}
  _micros=${_now#*[!0-9]}
  printf -v _clock '%(%Y-%m-%dT%H:%M:%S)T' "$_secs"
  printf -v _zone '%(%z)T' "$_secs"
  printf -v "$1" '%s.%s%s:%s' "$_clock" "${_micros:0:3}" "${_zone:0:3}" "${_zone:3:2}"
}

log() { # log LEVEL MESSAGE: one timestamped line to the log file, and to stdout (stderr for ERROR)
  local _ts
  stamp _ts
  printf '%s %s %s\n' "$_ts" "$1" "$2" >&3
  if [ "$1" = ERROR ]; then printf '%s %s %s\n' "$_ts" "$1" "$2" >&2; else printf '%s %s %s\n' "$_ts" "$1" "$2"; fi
}

stage_output_of() { # stage_output_of NAME OFFSET: the lines stage NAME logged after byte OFFSET, untagged
  # Read back from the log rather than kept in a second copy: a chatty stage costs no extra disk.
  tail -c +"$(($2 + 1))" "$log_file" 2>/dev/null |
    awk -v tag="[$1] " '{ rest = substr($0, index($0, " ") + 1); if (substr(rest, 1, length(tag)) == tag) print substr(rest, length(tag) + 1) }' |
    tail -n 200
}

log_size() { # log_size: the log file's size in bytes (where the next line will start)
  stat -c %s "$log_file" 2>/dev/null || echo 0
}

record_failure() { # record_failure STAGE REASON: "tracker fail", with the stage's logged output if any
  if [ -n "$1" ]; then
    tracker fail --stage "$1" --reason "$2" --output-file - < <(stage_output_of "$1" "$stage_log_offset")
  else
    tracker fail --reason "$2"
  fi
}

stage_output() { # stage_output NAME: copy stdin to the log and stdout, each line stamped and tagged
  local _line _ts
  while IFS= read -r _line || [ -n "$_line" ]; do
    stamp _ts
    printf '%s [%s] %s\n' "$_ts" "$1" "$_line" >&3
    printf '%s [%s] %s\n' "$_ts" "$1" "$_line"
  done
}

elapsed_since() { # elapsed_since MICROS: seconds since the EPOCHREALTIME-derived MICROS, e.g. 1.250s
  local now micros
  now=$(now_micros)
  micros=$((now - $1))
  printf '%d.%03ds' "$((micros / 1000000))" "$((micros % 1000000 / 1000))"
}

now_micros() {
  local now=${EPOCHREALTIME:-}
  [ -n "$now" ] || printf -v now '%(%s)T.000000' -1
  printf '%s' "$((10#${now%%[!0-9]*} * 1000000 + 10#${now#*[!0-9]}))"
}

tracker() { # tracker ARGS...: a monitoring hook; logs its messages, and a WARNING when it fails
  local rc=0 line
  tracker_out=$(tracker_raw "$@") || rc=$?
  while IFS= read -r line; do log INFO "tracker: $line"; done <"$tracker_err_file"
  if [ "$rc" -ne 0 ]; then
    log WARNING "tracker call '$*' failed with exit code $rc; the run goes on (the monitor will flag the batch)"
  fi
  return "$rc"
}

mkdir -p "$log_dir" 2>/dev/null || die_usage "LOG_DIR: cannot create directory $log_dir"
exec 3>>"$log_file" || die_usage "LOG_DIR: cannot append to $log_file"

# ----------------------------------------------------------------------------- one run at a time

# Opened read-write so that a refused run does not truncate the holder's pid from the file.
exec 9<>"$lock_file" || die_usage "LOG_DIR: cannot open lock file $lock_file"
if ! flock --nonblock 9; then
  holder=$(head -c 32 "$lock_file" 2>/dev/null | tr -cd '0-9')
  message="another run is in progress (pid ${holder:-unknown} holds $lock_file); not starting"
  log WARNING "$message (exit 75)"
  printf '%s: %s\n' "$me" "$message" >&2
  exit "$EXIT_LOCKED"
fi
printf '%s\n' "$$" >"$lock_file"

# ----------------------------------------------------------------------------- the run

# Under the lock, so this run owns it; beside the log, so a full /tmp cannot break the run.
tracker_err_file="$log_dir/.run_nightly.tracker-stderr"
: >"$tracker_err_file"
batch_id=unknown
stage_log_offset=0 # where the current stage's output starts in the log file
batch_open=false # true while the tracker holds this run's batch as running
current_stage=""
exit_reason=""

on_exit() {
  local rc=$?
  set +e
  if $batch_open; then
    # Whatever ended the run early (a signal, an unexpected error here), the batch must not stay
    # "running" until the deadline: record it failed, so the monitor alerts now.
    local reason=${exit_reason:-"run_nightly.sh exited unexpectedly with code $rc"}
    log ERROR "batch $batch_id failed${current_stage:+ at stage $current_stage}: $reason"
    record_failure "$current_stage" "$reason"
  fi
  rm -f "$tracker_err_file"
  exit "$rc"
}
trap on_exit EXIT
on_signal() { # on_signal NAME NUMBER
  exit_reason="interrupted by SIG$1"
  trap - "$1"
  exit $((128 + $2))
}
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

run_started=$(now_micros)
log INFO "=== $me${*:+ $*} (pid $$): stages file $stages_file, tracker file $tracker_file"
if ! command -v "$python" >/dev/null 2>&1; then
  log WARNING "tracker python '$python' not found (set BATCH_TRACKER_PYTHON, or run bin/setup.sh): nothing can be recorded"
fi

skip_list=""
if $resume; then
  # Not a monitoring side channel here: without a failed batch there is nothing to resume.
  if ! tracker_out=$(tracker_raw resume); then
    reason=$(tr '\n' ' ' <"$tracker_err_file")
    reason=$(trim "${reason#batch_tracker: }")
    log ERROR "${reason#error: }; nothing was run"
    exit "$EXIT_USAGE"
  fi
  batch_id=$tracker_out
  batch_open=true
  log INFO "resumed batch $batch_id"
  if tracker status --json && skip_list=$(completed_stages_of "$tracker_out"); then
    declared=$(expected_stages_of "$tracker_out")
    if [ "$declared" != "$stage_list" ]; then
      log WARNING "batch $batch_id was started with stages '$declared', the stages file now lists '$stage_list'"
    fi
  else
    # Re-running everything could repeat side effects (e-mails sent); refuse instead.
    exit_reason="could not read which stages are complete, so nothing was re-run"
    exit "$EXIT_USAGE"
  fi
else
  if tracker start --stages "$stage_list"; then
    batch_id=$tracker_out
    log INFO "started batch $batch_id with stages $stage_list"
  else
    log WARNING "running stages $stage_list without a batch record"
  fi
  batch_open=true
fi

for index in "${!stage_names[@]}"; do
  name=${stage_names[$index]}
  command=${stage_commands[$index]}
  if grep -qxF -- "$name" <<<"$skip_list"; then
    log INFO "stage $name already at 100% in batch $batch_id: skipped"
    continue
  fi
  current_stage=$name
  tracker stage "$name" 0 || true
  log INFO "stage $name started: $command"
  stage_log_offset=$(log_size)
  stage_started=$(now_micros)
  # The stage must not inherit the log (fd 3) or the lock (fd 9): a daemon it leaves behind
  # would otherwise hold the lock and refuse every later run.
  set +e
  BATCH_STAGE=$name NIGHTLY_BATCH_ID=$batch_id bash -c "$command" </dev/null 2>&1 3>&- 9>&- | stage_output "$name"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    reason="exit code $rc"
    if [ "$rc" -gt 128 ] && signal=$(kill -l "$((rc - 128))" 2>/dev/null); then
      reason="$reason (killed by SIG$signal)"
    fi
    log ERROR "stage $name failed after $(elapsed_since "$stage_started"): $reason"
    record_failure "$name" "$reason" || true
    batch_open=false
    log ERROR "batch $batch_id FAILED at stage $name ($reason); fix the cause, then run: bin/run_nightly.sh --resume"
    exit "$rc"
  fi
  tracker stage "$name" 100 || true
  log INFO "stage $name succeeded in $(elapsed_since "$stage_started")"
done

current_stage=""
tracker end || true
batch_open=false
log INFO "batch $batch_id completed in $(elapsed_since "$run_started")"
