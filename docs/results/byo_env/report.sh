#!/bin/bash
# Rebuild the reports of the bring-your-own-environment comparison from the committed logs (run from anywhere):
# marlrun's MAPPO presets against BenchMARL's MAPPO (scripts/benchmarl_baseline.py, its default hyperparameters) on
# the same tasks, episode lengths, budget (300k env steps) and seeds (0, 1, 2).
#   bash docs/results/byo_env/report.sh
set -e
cd "$(dirname "$0")"
names=(--label "framework=benchmarl=BenchMARL MAPPO" --label "framework=(not set)=marlrun MAPPO" --compare marlrun BenchMARL)
marlrun report marlrun/mappo_simple_spread benchmarl/simple_spread --out report_simple_spread "${names[@]}"
marlrun report marlrun/mappo_navigation benchmarl/navigation --out report_navigation "${names[@]}"
if [ -d presets ]; then
    marlrun report presets --out report_presets --include-partial
fi
