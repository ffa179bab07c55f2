#!/usr/bin/env bash
# Rebuilds this folder's report: the 39 runs of SUPER's pursuit comparison (13 groups x 3 seeds, one folder per group
# and seed), each group under its name (--label) and P(quantile > B) for each baseline B (--compare). The runs were
# made before experiment=super_sweep existed; the preset runs the same comparison now.
#   bash docs/results/super_pursuit/report.sh
set -euo pipefail
results=$(dirname "$0")
# (labels by parts: "algo.sharing=none" alone names independent DDQN and parameter sharing both)
compare=()
for label in "algo.sharing=none,parameter_sharing=false" "algo.sharing=all" "algo.sharing=none,parameter_sharing=true" \
             "experiment=super_pursuit, algo=qmix" "standardise_rewards=true,mixer=qmix" "mixer=vdn" \
             "algo=ippo,greedy_eval=false" "algo=mappo,greedy_eval=false"; do
  compare+=(--compare quantile "$label")
done
names=()
for pair in "algo.sharing=none,parameter_sharing=false|independent DDQN" "algo.sharing=all|share all" \
            "algo.sharing=quantile|SUPER quantile" "algo.sharing=gaussian|SUPER gaussian" "algo.sharing=stochastic|SUPER stochastic" \
            "algo.sharing=none,parameter_sharing=true|parameter sharing" "experiment=super_pursuit, algo=qmix|QMIX (paper's settings)" \
            "standardise_rewards=true,mixer=qmix|QMIX, standardised rewards" "mixer=vdn|VDN, standardised rewards" \
            "algo=ippo,greedy_eval=false|IPPO" "algo=mappo,greedy_eval=false|MAPPO" \
            "algo=ippo,greedy_eval=true|IPPO, greedy evaluation" "algo=mappo,greedy_eval=true|MAPPO, greedy evaluation"; do
  names+=(--label "$pair")
done
names=("${names[@]//|/=}")
marlrun report "$results" --ignore hardware --metric eval/episode_return --metric train/episode_return \
  --metric sharing/fraction "${names[@]}" "${compare[@]}"
