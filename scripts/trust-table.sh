#!/usr/bin/env bash
# The trust table of issue 14: every strategy and every pair of two, at 10/20/30 %
# adversaries, on jobs of 1 000 and 10 000 chunks, three seeds; one JSON object per
# run, appended to $OUT (default trust-table.jsonl). Order: singles at 1 000 chunks,
# pairs at 1 000, then the honest baseline and singles at 10 000, then pairs at
# 10 000; so a run cut short still has the cheap rows.
#
#   cargo build --release -p peergrid-node
#   scripts/trust-table.sh [OUT]            # long: hundreds of runs
#   jq -s 'map(select(.wrong_accepted > 0 or .honest_excluded > 0 or .job_state != "done"))' trust-table.jsonl
set -u
BIN=${BIN:-target/release/peergrid}
OUT=${1:-trust-table.jsonl}
LIE=${LIE:-0.5}
SEEDS=${SEEDS:-"1 2 3"}
S=(liar colluder lazy inflate co-placed trust-then-lie withdraw-late sybil-churn plant-poison job-killer)
export RUST_LOG=error
run() { # chunks strategy fraction seed
  "$BIN" bench trust --json --chunks "$1" --strategy "$2" --adversaries "$3" \
    --lie-rate "$LIE" --seed "$4" 2>>"$OUT.err" | grep '^{' >>"$OUT"
}
for n in 1000 10000; do
  for seed in $SEEDS; do "$BIN" bench trust --json --chunks "$n" --seed "$seed" 2>>"$OUT.err" | grep '^{' >>"$OUT"; done
  for s in "${S[@]}"; do for f in 0.1 0.2 0.3; do for seed in $SEEDS; do run "$n" "$s" "$f" "$seed"; done; done; done
  for ((i = 0; i < ${#S[@]}; i++)); do for ((j = i + 1; j < ${#S[@]}; j++)); do
    for f in 0.1 0.2 0.3; do for seed in $SEEDS; do run "$n" "${S[i]},${S[j]}" "$f" "$seed"; done; done
  done; done
done
