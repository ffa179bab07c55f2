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
if [ -d mappo_bps1 ]; then
    marlrun report mappo_bps1 --ignore hardware --out report_mappo_bps1 $metrics \
        --label "algo.parameter_sharing=none=MAPPO, none shared" --label "algo.parameter_sharing=all=MAPPO, all shared" \
        --label "algo.parameter_sharing=selective=MAPPO, SePS" "${compare[@]}"
fi
if [ -d bps4 ]; then
    marlrun report bps4 --ignore hardware --ignore total_steps --out report_bps4 $metrics "${names[@]}" "${compare[@]}"
fi
if [ -d super_pursuit_selective ]; then
    # SUPER-DDQN (sharing=none) on pursuit: the selective runs (120k steps) against the committed 800k runs of
    # independent DDQN and of one shared network (docs/results/super_pursuit), cut at 120k so all have one budget
    cut=$(mktemp -d)
    python - "$cut" <<'PY'
import json, shutil, sys
from pathlib import Path
cut = Path(sys.argv[1])
for group in ("none", "parameter_sharing"):
    for run in sorted(Path("../super_pursuit", group).glob("seed_*")):
        target = cut / f"{group}_{run.name}"
        shutil.copytree(run / ".hydra", target / ".hydra")
        rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["step"] <= 120_000]
        (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = target / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace("total_steps: 800000", "total_steps: 120000"))
PY
    cp -r super_pursuit_selective/* "$cut"/
    marlrun report "$cut" --ignore hardware --ignore algo.seps --ignore time_limit --out report_super_pursuit_120k \
        --label "algo.parameter_sharing=false=DDQN, none shared" --label "algo.parameter_sharing=true=DDQN, all shared" \
        --label "algo.parameter_sharing=selective=DDQN, SePS" --compare SePS "none shared" --compare SePS "all shared"
    rm -rf "$cut"
fi
