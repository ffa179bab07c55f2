#!/bin/bash
# Rebuild the reports of the selective parameter sharing comparison from the committed logs (run from anywhere).
#   bash docs/results/seps/report.sh
set -e
cd "$(dirname "$0")"
metrics="--metric eval/episode_return --metric eval/game/on_landmark --metric eval/game/final_distance"
names=(--label "algo.parameter_sharing=none=IPPO, none shared" --label "algo.parameter_sharing=all=IPPO, all shared"
       --label "algo.parameter_sharing=selective=IPPO, SePS")
compare=(--compare SePS "all shared" --compare SePS "none shared" --compare "none shared" "all shared")
marlrun report bps1 --ignore hardware --out report_bps1 $metrics "${names[@]}" "${compare[@]}"
if [ -d bps4 ]; then
    marlrun report bps4 --ignore hardware --ignore total_steps --out report_bps4 $metrics "${names[@]}" "${compare[@]}"
fi
