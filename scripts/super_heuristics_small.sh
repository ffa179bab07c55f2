#!/usr/bin/env bash
# SUPER's experience-sharing heuristics against each other on a small pursuit (10x10, 4 pursuers, 4 evaders, 30k env
# steps): none, all, quantile, gaussian, stochastic x 3 seeds (experiment=super_heuristics_small), then the report.
# About 30 minutes on a 2-core CPU with two jobs at a time.
#   scripts/super_heuristics_small.sh [OUT_DIR] [HYDRA OVERRIDES...]
# LAUNCHER picks the Hydra launcher, e.g. LAUNCHER="hydra/launcher=submitit_slurm hydra.launcher.partition=cpu".
set -euo pipefail
out=${1:-outputs/paper/super_heuristics_small}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep (e.g. total_steps=50000)
status=0
marlrun train -m experiment=super_heuristics_small ${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2} \
  hydra.sweep.dir="$out" "$@" || status=$?   # a failed job is listed by the sweep and by the report; report the others
marlrun report "$out" --metric eval/episode_return --metric train/episode_return --metric sharing/fraction
exit $status
