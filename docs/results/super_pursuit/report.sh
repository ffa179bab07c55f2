#!/usr/bin/env bash
# Rebuilds this folder's report: the 39 runs of SUPER's pursuit comparison (13 groups x 3 seeds, one folder per group
# and seed; the report names each group by its method) and P(SUPER quantile > B) for each baseline B (--compare). The
# runs were made before experiment=super_sweep existed; the preset runs the same comparison now.
#   bash docs/results/super_pursuit/report.sh
set -euo pipefail
results=$(dirname "$0")
compare=()
for baseline in "independent DDQN" "share all" "parameter sharing" "QMIX" "QMIX, standardised rewards" \
                "VDN, standardised rewards" "IPPO" "MAPPO"; do
  compare+=(--compare "SUPER quantile" "$baseline")
done
# hardware: runs of one group ran with different threads and precisions (see sweep_summary.json); it is no group
marlrun report "$results" --ignore hardware --metric eval/episode_return --metric train/episode_return \
  --metric sharing/fraction "${compare[@]}"
