#!/usr/bin/env bash
# MADDPG's physical-deception match-ups (Lowe et al., NeurIPS 2017) on mpe2 simple_adversary: MADDPG everywhere, a DDPG
# adversary against MADDPG good agents, DDPG good agents against a MADDPG adversary, and DDPG everywhere; 3 seeds each
# (experiment=maddpg_adversary, 150k env steps), then one report of each team's return and success rate.
# About 2 minutes per run on a 2-core CPU, 12 runs.
#   scripts/maddpg_matchups.sh [OUT_DIR] [HYDRA OVERRIDES...]
set -euo pipefail
out=${1:-outputs/paper/maddpg_matchups}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep (e.g. total_steps=50000)
status=0
launcher=${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2}
marlrun train -m experiment=maddpg_adversary 'algo.ddpg_teams=[],[adversary],[good]' seed=0,1,2 $launcher \
  hardware.torch_threads=1 hydra.sweep.dir="$out/critic_maddpg" "$@" || status=$?
marlrun train -m experiment=maddpg_adversary algo.critic=ddpg seed=0,1,2 $launcher \
  hardware.torch_threads=1 hydra.sweep.dir="$out/critic_ddpg" "$@" || status=$?
marlrun report "$out" --metric eval/game/good_success --metric eval/game/adversary_success \
  --metric eval/team_return/good --metric eval/team_return/adversary
exit $status
