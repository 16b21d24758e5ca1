#!/usr/bin/env bash
# Usage: bin/demo.sh
#
# The main job, end to end, with the embedded defaults: starts the completion
# monitor, runs the demo nightly batch (etc/nightly_stages.demo.conf) through
# bin/run_nightly.sh, lets one stage fail so the monitor sends a "failed" alert,
# resumes the batch so it sends the recovery, then prints the status view. The
# monitor also posts each notification as JSON to a webhook (ALERT_WEBHOOK_URL):
# here a local HTTP sink on a free port, standing in for Slack, gone at exit.
#
# State goes to data/batch_tracker.json, alert e-mails to data/outbox/ (.eml
# files: no SMTP_SERVER is configured), metrics to http://127.0.0.1:${METRICS_PORT:-9469}/metrics,
# logs to logs/. BATCH_TRACKER_FILE, BATCH_OUTBOX_DIR, METRICS_PORT and LOG_DIR
# move them. Last, one check of two jobs from one jobs file (etc/jobs.demo.toml:
# its state beside BATCH_TRACKER_FILE in jobs/, its e-mails in the outbox's
# jobs-demo/). Run bin/setup.sh first.
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

# The webhook sink: answers 200 and keeps each POST body as posts/NNN.json.
webhook_sink='
import http.server, os, sys
posts = sys.argv[1]
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        name = os.path.join(posts, "%03d.json" % len(os.listdir(posts)))
        with open(name + ".tmp", "wb") as out:
            out.write(body)
        os.replace(name + ".tmp", name)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Sink)
print(server.server_port, flush=True)
server.serve_forever()
'
webhook_dir=$(mktemp -d)
mkdir "$webhook_dir/posts"
"$python" -c "$webhook_sink" "$webhook_dir/posts" >"$webhook_dir/port" &
sink_pid=$!
monitor_pid=""
cleanup() {
  if [ -n "$monitor_pid" ]; then kill -TERM "$monitor_pid" 2>/dev/null; wait "$monitor_pid" 2>/dev/null || true; fi
  kill -TERM "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null || true
  rm -rf "$webhook_dir"
}
trap cleanup EXIT
tries=0
until [ -s "$webhook_dir/port" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 100 ]; then echo "demo.sh: the webhook sink did not start" >&2; exit 1; fi
  sleep 0.1
done
ALERT_WEBHOOK_URL="http://127.0.0.1:$(cat "$webhook_dir/port")/demo-webhook"
export ALERT_WEBHOOK_URL

show_webhook() { # show_webhook alert|recovery: poll the sink for up to 10 s, then print the post's text
  local tries=0 text=""
  until text=$("$python" -c '
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    post = json.loads(path.read_text())
    if post["status"] == sys.argv[2] and post["incident"] == "failed:" + sys.argv[3]:
        print(post["text"].splitlines()[0])
        break
' "$webhook_dir/posts" "$1" "$batch_id") && [ -n "$text" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then echo "demo.sh: no $1 webhook post after 10 s" >&2; return 1; fi
    sleep 0.1
  done
  echo "   webhook $ALERT_WEBHOOK_URL got: $text"
}

log_dir="${LOG_DIR:-logs}"
echo "== starting the completion monitor (log: $log_dir/demo_monitor.log)"
mkdir -p "$log_dir"
"$monitor" 2>"$log_dir/demo_monitor.log" &
monitor_pid=$!

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
show_webhook alert

echo "== resuming the failed batch from its failed stage"
bin/run_nightly.sh --resume
echo "== the recovery:"
show_mail recovery
show_webhook recovery

echo "== one monitor check (--once)"
"$monitor" --once || true
echo "== status"
bin/batch_tracker status

echo "== many jobs, one monitor: etc/jobs.demo.toml (BATCH_JOBS_FILE), the weekly job fails"
export BATCH_JOBS_FILE=etc/jobs.demo.toml
BATCH_NAME=weekly-rescore bin/batch_tracker start --stages rescore,publish >/dev/null
BATCH_NAME=weekly-rescore bin/batch_tracker fail --stage rescore --reason "exit code 4"
jobs_outbox="$outbox/jobs-demo"
BATCH_OUTBOX_DIR="$jobs_outbox" METRICS_PORT=0 "$monitor" --once || true
grep -h -m1 '^Subject:' "$jobs_outbox"/*.eml | sed 's/^/   /'
