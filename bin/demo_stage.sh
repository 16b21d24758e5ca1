#!/usr/bin/env bash
# Usage: bin/demo_stage.sh STAGE      (STAGE: scrape, enrich, dedupe, score, mockup, email)
#
# One stage of the demo LeadFactory pipeline that etc/nightly_stages.demo.conf runs through
# bin/run_nightly.sh. Each stage does a little real work on small CSV files (600 generated leads,
# about 10% of them duplicates) and reports 25/50/75% through bin/batch_tracker on the way;
# run_nightly.sh records 0% before and 100% after. mockup records the GPU spend, email the cost
# per lead. Outside run_nightly.sh (no BATCH_STAGE in the environment) nothing is recorded.
#
# Files: $DEMO_WORK_DIR (default: a "demo" directory beside the tracker file, data/demo/):
#   leads_raw.csv -> leads_enriched.csv -> leads_unique.csv -> leads_scored.csv -> mockups/ emails/
# Each output is written to a temporary file and renamed, so a failed stage leaves no half file.
#
#   DEMO_STAGE_FAIL=STAGE   that stage fails half-way with exit code 3 (to try alerts and --resume)
#
# Exit codes: 0 done; 3 simulated failure (DEMO_STAGE_FAIL); 1 an earlier stage's output is
# missing; 2 bad usage (unknown stage or DEMO_STAGE_FAIL value).
set -euo pipefail

readonly STAGES="scrape enrich dedupe score mockup email"
readonly LEADS_PER_PART=150 TOP_LEADS=20
me=demo_stage.sh

usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { # die CODE MESSAGE
  printf '%s: error: %s\n' "$me" "$2" >&2
  exit "$1"
}
is_stage() { case " $STAGES " in *" $1 "*) [ -n "$1" ] ;; *) return 1 ;; esac; }

case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ "$#" -eq 1 ] || die 2 "expected one argument, the stage (allowed: ${STAGES// /, })"
stage=$1
is_stage "$stage" || die 2 "unknown stage '$stage' (allowed: ${STAGES// /, })"
fail_stage=${DEMO_STAGE_FAIL:-}
if [ -n "$fail_stage" ] && ! is_stage "$fail_stage"; then
  die 2 "DEMO_STAGE_FAIL='$fail_stage' is not a demo stage (allowed: ${STAGES// /, })"
fi

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tracker_file=${BATCH_TRACKER_FILE:-data/batch_tracker.json}
case "$tracker_file" in /*) ;; *) tracker_file="$project_root/$tracker_file" ;; esac
work=${DEMO_WORK_DIR:-$(dirname "$tracker_file")/demo}
mkdir -p "$work"

tracker() { # tracker ARGS...: a monitoring hook; a failure is reported, never fatal to the stage
  [ -n "${BATCH_STAGE:-}" ] || return 0
  "$project_root/bin/batch_tracker" "$@" || echo "$me: warning: 'batch_tracker $*' failed; going on" >&2
}
progress() { tracker stage "${BATCH_STAGE:-$stage}" "$1"; }

maybe_fail() { # the simulated failure, half-way through the stage
  if [ "$fail_stage" = "$stage" ]; then
    echo "$me: simulated failure in stage $stage (DEMO_STAGE_FAIL=$fail_stage)" >&2
    exit 3
  fi
}

need() { # need FILE: an earlier stage's output
  [ -s "$work/$1" ] || die 1 "$work/$1 is missing: run the earlier stages first"
}

publish() { # publish TMP NAME: atomically put a finished output in place
  mv -f "$1" "$work/$2"
}

scrape() { # generate leads in four parts: id,business,city,website,email
  local part tmp="$work/leads_raw.csv.tmp"
  : >"$tmp"
  for part in 1 2 3 4; do
    awk -v first=$(((part - 1) * LEADS_PER_PART + 1)) -v last=$((part * LEADS_PER_PART)) 'BEGIN {
      split("Acme Bright Cedar Delta Evergreen Falcon Granite Harbor Iris Juniper", brand, " ")
      split("Bakery Plumbing Dental Roofing Landscaping Law Fitness Auto", trade, " ")
      split("Boston Denver Austin Portland Raleigh Tampa", city, " ")
      for (i = first; i <= last; i++) {
        j = (i % 10 == 0) ? i - 7 : i # every tenth page lists a business seen before
        b = brand[j % 10 + 1]; t = trade[int(j / 10) % 8 + 1]
        site = tolower(b t) j ".example"
        printf "%d,%s %s,%s,%s,info@%s\n", i, b, t, city[j % 6 + 1], site, site
      }
    }' >>"$tmp"
    [ "$part" -eq 4 ] || progress $((part * 25))
    [ "$part" -ne 2 ] || maybe_fail
  done
  publish "$tmp" leads_raw.csv
  echo "scraped $(wc -l <"$work/leads_raw.csv") leads"
}

enrich() { # append employees, rating (1.0-5.0), site_issue (0/1), in four parts
  need leads_raw.csv
  local part total tmp="$work/leads_enriched.csv.tmp"
  total=$(wc -l <"$work/leads_raw.csv")
  : >"$tmp"
  for part in 1 2 3 4; do
    awk -F, -v OFS=, -v from=$(((part - 1) * total / 4 + 1)) -v to=$((part * total / 4)) '
      NR >= from && NR <= to {
        n = length($4) * 31 + $1 * 7
        print $0, n % 240 + 3, sprintf("%.1f", 1 + (n % 41) / 10), (n % 3 == 0)
      }' "$work/leads_raw.csv" >>"$tmp"
    [ "$part" -eq 4 ] || progress $((part * 25))
    [ "$part" -ne 2 ] || maybe_fail
  done
  publish "$tmp" leads_enriched.csv
  echo "enriched $total leads"
}

dedupe() { # keep the first lead per website
  need leads_enriched.csv
  local tmp="$work/leads_unique.csv.tmp" sorted="$work/leads_by_site.tmp" before after
  sort -t, -k4,4 -k1,1n "$work/leads_enriched.csv" >"$sorted"
  progress 25
  awk -F, '!seen[$4]++' "$sorted" >"$tmp"
  progress 50
  maybe_fail
  sort -t, -k1,1n -o "$tmp" "$tmp"
  rm -f "$sorted"
  progress 75
  before=$(wc -l <"$work/leads_enriched.csv")
  after=$(wc -l <"$tmp")
  publish "$tmp" leads_unique.csv
  echo "removed $((before - after)) duplicates, $after unique leads"
}

score() { # score = rating*10 + small-business bonus + site-issue bonus; best first
  need leads_unique.csv
  local tmp="$work/leads_scored.csv.tmp"
  awk -F, -v OFS=, '{ print $0, $7 * 10 + ($6 < 50 ? 20 : 5) + $8 * 30 }' "$work/leads_unique.csv" >"$tmp.unsorted"
  progress 25
  maybe_fail
  sort -t, -k9,9nr -k1,1n "$tmp.unsorted" >"$tmp"
  rm -f "$tmp.unsorted"
  progress 50
  awk -F, '{ sum += $9 } END { if (NR) printf "scored %d leads, mean score %.1f\n", NR, sum / NR }' "$tmp"
  progress 75
  publish "$tmp" leads_scored.csv
  echo "best lead: $(head -n 1 "$work/leads_scored.csv" | cut -d, -f2,3,9)"
}

mockup() { # a small HTML mock-up of a redesigned site for each of the top leads
  need leads_scored.csv
  local dir="$work/mockups.tmp"
  rm -rf "$dir"
  mkdir -p "$dir"
  head -n "$TOP_LEADS" "$work/leads_scored.csv" | awk -F, -v dir="$dir" '{
    file = dir "/" $1 ".html"
    printf "<!doctype html>\n<title>%s</title>\n<h1>%s, %s</h1>\n<p>New site for %s (score %s)</p>\n", $2, $2, $3, $4, $9 > file
    close(file)
  }'
  progress 25
  maybe_fail
  progress 50
  tracker cost --gpu-dollars 1.25 # the rendering GPU's time for this batch
  progress 75
  rm -rf "$work/mockups"
  mv "$dir" "$work/mockups"
  echo "rendered $(find "$work/mockups" -name '*.html' | wc -l) mock-ups"
}

email() { # an outreach draft per mock-up (written to files, never sent)
  need leads_scored.csv
  [ -d "$work/mockups" ] || die 1 "$work/mockups is missing: run the mockup stage first"
  local dir="$work/emails.tmp"
  rm -rf "$dir"
  mkdir -p "$dir"
  progress 25
  maybe_fail
  head -n "$TOP_LEADS" "$work/leads_scored.csv" | awk -F, -v dir="$dir" '{
    file = dir "/" $1 ".txt"
    printf "To: %s\nSubject: A new website for %s\n\nSee the mock-up: mockups/%s.html\n", $5, $2, $1 > file
    close(file)
  }'
  progress 50
  tracker cost --per-lead 0.42
  progress 75
  rm -rf "$work/emails"
  mv "$dir" "$work/emails"
  echo "drafted $(find "$work/emails" -name '*.txt' | wc -l) e-mails in $work/emails"
}

"$stage"
