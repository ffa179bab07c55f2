#!/usr/bin/env bash
# Does the default thread setting survive a busy machine? Times the README's first run (SUPER-DDQN on the paper's
# pursuit, default config, STEPS env steps) three ways, alternating, REPS times, on a quiet machine and beside one
# CPU-bound competitor (`python -c "while True: pass"`, started before the runs):
#   before: what auto gave before it looked at the load: every core (at most 4) as torch threads;
#   auto:   hardware.torch_threads=0, the default: the cores less those other processes keep busy at start;
#   one:    hardware.torch_threads=1.
# Prints env steps/s per arm and condition (median of REPS) and each arm's ratio to `one` on the same condition.
#   scripts/threads_busy.sh [STEPS] [REPS]
# Stop any other training first: the quiet condition must be quiet.
set -euo pipefail
steps=${1:-3000}
reps=${2:-3}
out=$(mktemp -d)
trap 'kill $busy 2>/dev/null || true; rm -rf "$out"' EXIT
busy=""
cores=$(( $(nproc) < 4 ? $(nproc) : 4 ))
run() {  # arm condition rep
  local dir="$out/$1_$2_$3" threads=0
  case $1 in before) threads=$cores ;; one) threads=1 ;; esac
  marlrun train total_steps="$steps" hardware.torch_threads=$threads eval_episodes=0 log_interval="$steps" \
    checkpoint_interval="$steps" progress=false print_config=false hydra.run.dir="$dir" > /dev/null 2> "$dir.err" || { cat "$dir.err"; exit 1; }
  python -c "import json; print(json.load(open('$dir/summary.json'))['steps_per_sec'])" >> "$out/$1_$2"
}
for condition in quiet busy; do
  if [ "$condition" = busy ]; then python -c "while True: pass" & busy=$!; fi
  for rep in $(seq "$reps"); do
    for arm in before auto one; do run $arm $condition "$rep"; done
  done
  if [ -n "$busy" ]; then kill "$busy"; busy=""; fi
done
python - "$out" <<'PY'
import statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
med = {p.name: statistics.median(float(x) for x in p.read_text().split()) for p in out.iterdir() if p.is_file() and "_" in p.name and not p.name.endswith(".err")}
print("| condition | before (every core) | auto (cores left idle) | 1 thread | before / 1 thread | auto / 1 thread |")
print("|---|---|---|---|---|---|")
for c in ("quiet", "busy"):
    b, a, o = med[f"before_{c}"], med[f"auto_{c}"], med[f"one_{c}"]
    print(f"| {c} | {b:,.0f} | {a:,.0f} | {o:,.0f} | {b / o:.2f} | {a / o:.2f} |")
PY
