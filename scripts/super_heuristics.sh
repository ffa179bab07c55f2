#!/usr/bin/env bash
# The SUPER paper's heuristic comparison on pursuit (experiment=super_heuristics: 8 pursuers, 30 evaders, 16x16,
# 800k env steps; none, all, quantile, gaussian, stochastic x 3 seeds = 15 runs), then the report.
# About 72 minutes per run on a 2-core CPU (bf16); meant for a GPU box or a cluster:
#   LAUNCHER="hydra/launcher=submitit_slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1 \
#     hydra.launcher.cpus_per_task=4 hydra.launcher.timeout_min=240" scripts/super_heuristics.sh
set -euo pipefail
out=${1:-outputs/paper/super_heuristics}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep (e.g. total_steps=50000)
status=0
marlrun train -m experiment=super_heuristics ${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2} \
  hydra.sweep.dir="$out" "$@" || status=$?
marlrun report "$out" --metric eval/episode_return --metric train/episode_return --metric sharing/fraction
exit $status
