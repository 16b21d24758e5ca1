#!/usr/bin/env bash
# Usage: bin/demo.sh
#
# The main job, end to end, with the embedded defaults: starts the completion
# monitor, runs the demo nightly batch (etc/nightly_stages.demo.conf) through
# bin/run_nightly.sh, lets one stage fail so the monitor sends a "failed" alert,
# resumes the batch so it sends the recovery, then prints the status view.
#
# State goes to data/batch_tracker.json, alert e-mails to data/outbox/ (.eml
# files: no SMTP_SERVER is configured), metrics to http://127.0.0.1:${METRICS_PORT:-9469}/metrics,
# logs to logs/. BATCH_TRACKER_FILE, BATCH_OUTBOX_DIR, METRICS_PORT and LOG_DIR
# move them. Run bin/setup.sh first.
set -euo pipefail

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
case "${1:-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) echo "demo.sh: unknown option '$1' (allowed: --help)" >&2; exit 2 ;;
esac

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project_root"
python=.venv/bin/python
# The monitor's console script, which bin/setup.sh installs with the project.
monitor=.venv/bin/batch-completion-monitor
[ -x "$monitor" ] || { echo "demo.sh: .venv is missing or outdated; run bin/setup.sh first" >&2; exit 2; }

export NIGHTLY_STAGES_FILE="${NIGHTLY_STAGES_FILE:-etc/nightly_stages.demo.conf}"
export BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="${BATCH_COMPLETION_CHECK_INTERVAL_SECONDS:-300}"
outbox="${BATCH_OUTBOX_DIR:-data/outbox}"

batch_id=""

mail_for() { # mail_for alert|recovery: the outbox file of that notification for this batch's failure
  local file
  for file in "$outbox"/*.eml; do
    [ -e "$file" ] || continue
    if grep -q "^X-Batch-Incident: failed:$batch_id" "$file" && grep -q "^X-Batch-Notification: $1" "$file"; then
      echo "$file"
      return 0
    fi
  done
  return 1
}

show_mail() { # show_mail alert|recovery: poll the outbox for up to 10 s, then print its path and subject
  local tries=0 file
  until file=$(mail_for "$1"); do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then echo "demo.sh: no $1 e-mail in $outbox after 10 s" >&2; return 1; fi
    sleep 0.1
  done
  echo "   $file"
  grep -m1 '^Subject:' "$file" | sed 's/^/   /'
}

log_dir="${LOG_DIR:-logs}"
echo "== starting the completion monitor (log: $log_dir/demo_monitor.log)"
mkdir -p "$log_dir"
"$monitor" 2>"$log_dir/demo_monitor.log" &
monitor_pid=$!
trap 'kill -TERM "$monitor_pid" 2>/dev/null; wait "$monitor_pid" 2>/dev/null || true' EXIT

echo "== nightly batch, with the 'score' stage made to fail"
if DEMO_STAGE_FAIL=score bin/run_nightly.sh; then
  echo "demo.sh: expected the demo batch to fail at 'score'" >&2
  exit 1
else
  echo "-- run_nightly.sh exited $? (the failed stage's exit code)"
fi
batch_id=$("$python" -c 'import json, sys; print(json.load(sys.stdin)["id"])' < <(bin/batch_tracker status --json))
echo "== the monitor's alert:"
show_mail alert

echo "== resuming the failed batch from its failed stage"
bin/run_nightly.sh --resume
echo "== the recovery:"
show_mail recovery

echo "== one monitor check (--once)"
"$monitor" --once || true
echo "== status"
bin/batch_tracker status
