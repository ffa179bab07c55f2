#!/usr/bin/env bash
# The on-policy baselines beside the off-policy ones, 3 seeds each, reported with `marlrun report`:
#   1. IPPO and MAPPO on the default pursuit at 50k env steps (the budget of docs/results/qmix_pursuit_50k, whose
#      independent-DDQN runs are the comparison), evaluated like those runs (10 greedy episodes every 10k steps);
#   2. MAPPO and MADDPG on simple_adversary, both teams learning, 150k env steps, 100 episodes every 25k (success rates).
# The paper-scale pursuit runs are the preset itself: marlrun train -m experiment=ppo_pursuit algo=ippo,mappo seed=0,1,2
# Two jobs at a time (joblib), one torch thread each. Cost on a 2-core CPU: see docs/results/ppo_baselines/README.md.
#   scripts/ppo_baselines.sh [OUT_DIR] [HYDRA OVERRIDES...]
set -euo pipefail
out=${1:-outputs/paper/ppo_baselines}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep
status=0
launcher=${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2}
marlrun train -m experiment=ppo_pursuit algo=ippo,mappo seed=0,1,2 total_steps=50000 eval_interval=10000 eval_episodes=10 \
  log_interval=5000 $launcher hardware.torch_threads=1 hydra.sweep.dir="$out/pursuit_50k" "$@" || status=$?
marlrun train -m experiment=mappo_adversary seed=0,1,2 $launcher hardware.torch_threads=1 hydra.sweep.dir="$out/adversary_mappo" "$@" || status=$?
marlrun train -m experiment=maddpg_adversary seed=0,1,2 $launcher hardware.torch_threads=1 hydra.sweep.dir="$out/adversary_maddpg" "$@" || status=$?
marlrun report "$out/pursuit_50k" --out "$out/report_pursuit_50k" --ignore hardware || status=$?
marlrun report "$out/adversary_mappo" "$out/adversary_maddpg" --out "$out/report_adversary" --ignore hardware \
  --metric eval/game/good_success --metric eval/game/adversary_success --metric eval/team_return/good --metric eval/team_return/adversary || status=$?
exit $status
