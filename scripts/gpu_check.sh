#!/usr/bin/env bash
# The CUDA path end to end, in one go, on a machine with an NVIDIA GPU (at most about 8 minutes: a deadline skips
# what would not fit; sized for a short lease):
#   1. the CUDA tests (native pursuit and Ising against the CPU, step for step);
#   2. for each algorithm: `marlrun train` on hardware=cuda, then, each on its own (one failing does not hide the
#      other), `marlrun eval` of its checkpoint and a resume of it to twice the steps (six pipelines side by side, two
#      torch threads each);
#   3. `marlrun bench` on the GPU, alone: the paper's SUPER-DDQN update (ms, at batch 32 and at batch 1 per agent: when
#      the two are close the update is launch-bound, which is what a CUDA graph would fix) and training throughput.
#   scripts/gpu_check.sh [OUT_DIR]        (default: $OUT where set, else gpu_check/)
# Writes four files (the lending machine returns few), as it goes, so that a check cut short still leaves the others:
# summary.txt (PASS/FAIL/SKIP and seconds per check), checks.log (every command's output, appended as each check ends),
# bench.txt (the bench tables) and bench_cuda.json. Exits 1 if any check failed or was skipped.
# On a machine without the project's packages it installs them from .whl/ (scripts/gpu_wheels.sh, run where PyPI is
# reachable) with no network, and runs marlrun from this source tree. DEVICE=cpu runs the same checks on the CPU
# (to try the script itself: the pipelines one at a time on one torch thread); STEPS sets the training length (default
# 6000 env steps, doubled by the resume; at least 2048, one update of the MAPPO preset); BENCH_CASES the bench cases (space-separated).
set -uo pipefail   # no -e: every check runs and is reported, failed or not
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check}}
device=${DEVICE:-cuda}
steps=${STEPS:-6000}
deadline=$((SECONDS + ${BUDGET_S:-450}))   # checks that would start after it are skipped (and reported)
mkdir -p "$out"
out=$(cd "$out" && pwd)
runs=$(mktemp -d)
logs=$runs/logs
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
: > "$out/summary.txt"
: > "$out/checks.log"

if ! python3 -c "import hydra, pettingzoo, magent2, mpe2, supersuit" 2> /dev/null; then
  [[ -d .whl ]] || { echo "the project's packages are missing and there is no .whl/: run scripts/gpu_wheels.sh where PyPI is reachable" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/marlrun-site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/marlrun-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import marlrun.conf" 2> /dev/null; then
  ln -sfn ../conf marlrun/conf   # a source tree, not installed: conf/ is the package marlrun.conf (pyproject's package-dir)
fi

check() {  # NAME COMMAND...: run it, its output into its own log (appended to checks.log when it ends), PASS/FAIL and seconds into summary.txt
  local name=$1 start=$SECONDS rc
  shift
  if ((SECONDS >= deadline)); then echo "SKIP $name (out of time)" >> "$out/summary.txt"; return 1; fi
  echo "=== $name: $*" > "$logs/$name.log"
  "$@" >> "$logs/$name.log" 2>&1
  rc=$?
  if ((rc == 0)); then echo "PASS $name ($((SECONDS - start)) s)"; else echo "FAIL $name (exit $rc, $((SECONDS - start)) s)"; fi \
    >> "$out/summary.txt"
  { cat "$logs/$name.log"; echo; } >> "$out/checks.log"
  return $rc
}

check machine bash -c "nvidia-smi 2>&1 | head -15; python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())'; nproc"

if [[ $device == cuda ]]; then
  check cuda-tests python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_pursuit_native.py tests/test_ising.py -k cuda
fi

pipeline() {  # NAME OVERRIDES...: train; then evaluate the checkpoint and resume to twice the steps, each on its own
  local name=$1 dir="$runs/$1"
  shift
  check "$name-train" timeout 200 python3 -m marlrun.cli train "hardware=$device" hardware.torch_threads="$threads" "$@" \
    total_steps="$steps" eval_interval=$((steps / 2)) eval_episodes=4 checkpoint_interval="$steps" progress=false \
    print_config=false hydra.run.dir="$dir"
  if ! compgen -G "$dir/checkpoints/step_*.pt" > /dev/null; then return 1; fi   # nothing to evaluate or resume
  check "$name-eval" timeout 90 python3 -m marlrun.cli eval "$dir" episodes=4
  check "$name-resume" timeout 200 python3 -m marlrun.cli train resume="$dir" total_steps=$((2 * steps)) progress=false
}
pipelines=(
  "super_ddqn algo=super_ddqn env=pursuit"
  "qmix algo=qmix env=pursuit"
  "mappo experiment=ppo_pursuit algo=mappo"
  "maddpg algo=maddpg env=simple_adversary algo.learning_starts=1000"
  "mfq_battle experiment=mfq_battle algo.learning_starts=500"
  "mfq_ising experiment=mfq_ising"
)
threads=2
[[ $device == cpu ]] && threads=1
for p in "${pipelines[@]}"; do
  read -r -a words <<< "$p"
  if [[ $device == cpu ]]; then pipeline "${words[@]}"; else pipeline "${words[@]}" & fi   # a GPU machine has the cores
done
wait
sort -o "$out/summary.txt" "$out/summary.txt"

# alone on the machine: figures to compare
cases=()
for c in ${BENCH_CASES:-super_ddqn-update pursuit-native-1024-raw super_ddqn-pursuit qmix-pursuit mappo-pursuit \
                       maddpg-simple_adversary-inprocess mfq-battle mfq-ising-256}; do cases+=(--case "$c"); done
left=$((deadline - SECONDS + 30))
check bench timeout $((left > 60 ? left : 60)) python3 -m marlrun.cli bench "hardware=$device" --seconds 3 --timeout 90 \
  --json "$out/bench_$device.json" "${cases[@]}"
[[ -f $logs/bench.log ]] && cp "$logs/bench.log" "$out/bench.txt"
rm -rf "$runs"
cat "$out/summary.txt"
! grep -q '^FAIL\|^SKIP' "$out/summary.txt"
