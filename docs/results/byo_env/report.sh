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
# the other presets, one seed each: their final and random-policy returns
python3 - <<'PY'
import json, pathlib
for summary in sorted(pathlib.Path("presets").glob("*/seed0/summary.json")):
    s = json.loads(summary.read_text())
    print(f"{summary.parts[1]:22s} final eval return {s['final_eval_return']:8.3f}   random policy {s['random_eval_return']:8.3f}   "
          f"{s['wall_time_s'] / 60:5.1f} min, {s['steps_per_sec']:,.0f} env steps/s")
PY
