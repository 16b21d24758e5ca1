#!/usr/bin/env bash
# Usage: bin/demo.sh
#
# The main job, end to end, with the embedded defaults: starts the completion
# monitor, runs the demo nightly batch (etc/nightly_stages.demo.conf) through
# bin/run_nightly.sh, lets one stage fail so the monitor sends a "failed" alert,
# resumes the batch so it sends the recovery, then prints the status view.
#
# State goes to data/batch_tracker.json, alert e-mails to data/outbox/ (.eml
# files: no SMTP_SERVER is configured), metrics to http://127.0.0.1:${METRICS_PORT:-9469}/metrics.
# Run bin/setup.sh first.
set -euo pipefail

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) echo "demo.sh: unknown option '$1' (allowed: --help)" >&2; exit 2 ;;
esac

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project_root"
python=.venv/bin/python
[ -x "$python" ] || { echo "demo.sh: .venv is missing; run bin/setup.sh first" >&2; exit 2; }

export NIGHTLY_STAGES_FILE="${NIGHTLY_STAGES_FILE:-etc/nightly_stages.demo.conf}"
export BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="${BATCH_COMPLETION_CHECK_INTERVAL_SECONDS:-300}"
outbox="${BATCH_OUTBOX_DIR:-data/outbox}"

# find fails while the outbox does not exist yet; that is zero mails, not an error.
count_mails() { { find "$outbox" -maxdepth 1 -name '*.eml' 2>/dev/null || true; } | wc -l; }

wait_for_mails() { # wait_for_mails COUNT: poll the outbox for up to 10 s
  local want=$1 tries=0
  until [ "$(count_mails)" -ge "$want" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then echo "demo.sh: no alert after 10 s" >&2; return 1; fi
    sleep 0.1
  done
}

echo "== starting the completion monitor (log: logs/demo_monitor.log)"
mkdir -p logs
"$python" bin/batch_completion_monitor.py 2>logs/demo_monitor.log &
monitor_pid=$!
trap 'kill -TERM "$monitor_pid" 2>/dev/null; wait "$monitor_pid" 2>/dev/null || true' EXIT

mails_before=$(count_mails)
echo "== nightly batch, with the 'score' stage made to fail"
if DEMO_STAGE_FAIL=score bin/run_nightly.sh; then
  echo "demo.sh: expected the demo batch to fail at 'score'" >&2
  exit 1
else
  echo "-- run_nightly.sh exited $? (the failed stage's exit code)"
fi
wait_for_mails $((mails_before + 1))
echo "== the monitor's alert:"
newest=$(find "$outbox" -maxdepth 1 -name '*.eml' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
echo "   $newest"
grep -m1 '^Subject:' "$newest" | sed 's/^/   /'

echo "== resuming the failed batch from its failed stage"
bin/run_nightly.sh --resume
wait_for_mails $((mails_before + 2))
newest=$(find "$outbox" -maxdepth 1 -name '*.eml' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
echo "== the recovery:"
echo "   $newest"
grep -m1 '^Subject:' "$newest" | sed 's/^/   /'

echo "== one monitor check (--once)"
"$python" bin/batch_completion_monitor.py --once || true
echo "== status"
bin/batch_tracker status
