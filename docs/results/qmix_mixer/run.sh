#!/usr/bin/env bash
# QMIX on the paper's pursuit (experiment=super_pursuit algo=qmix), seeds 0-5, early in training: as configured (pymarl's
# settings, 30k env steps) and with algo.standardise_rewards=true (60k env steps). How often the mixer saturates
# (train/mixer_slope, dQ_tot/dQ_a, falls to about 0 and the greedy policy freezes), and whether standardised rewards
# avoid it. The same settings as the SUPER sweep's QMIX runs (docs/results/super_pursuit/qmix: bf16, one thread), so an unstandardised seed S
# here follows that sweep's run of seed S step for step. LANES runs at a time (default 1; one thread each).
#   docs/results/qmix_mixer/run.sh [OUT_DIR]
set -euo pipefail
out=${1:-outputs/qmix_mixer}
here=$(dirname "$0")
common="experiment=super_pursuit algo=qmix seed=0,1,2,3,4,5 save_replay=false progress=false hardware.torch_threads=1
        hardware.precision=bf16 hydra/launcher=joblib hydra.launcher.n_jobs=${LANES:-1}"
mkdir -p "$out"
start=$(date +%s)
# shellcheck disable=SC2086
marlrun train -m $common algo.standardise_rewards=false total_steps=30000 hydra.sweep.dir="$out/as_configured" > "$out/as_configured.log" 2>&1
# shellcheck disable=SC2086
marlrun train -m $common algo.standardise_rewards=true total_steps=60000 hydra.sweep.dir="$out/standardised" > "$out/standardised.log" 2>&1
echo "wall $(( $(date +%s) - start )) s" | tee "$out/wall.txt"
for run in "$out"/*/[0-9]*/; do   # every run's logs and config, no checkpoints
  keep="$here/${run#"$out"/}"
  mkdir -p "$keep"
  cp "$run/metrics.jsonl" "$run/summary.json" "$keep" && cp -r "$run/.hydra" "$keep"
done
cp "$out/wall.txt" "$here/"
marlrun report "$here" --ignore hardware --metric eval/episode_return --metric train/mixer_slope --out "$here/report"
