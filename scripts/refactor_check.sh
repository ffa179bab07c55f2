#!/usr/bin/env bash
# Short runs of every algorithm (and three resumed runs) with one seed, for checking that a change to the code leaves
# what is learned exactly as it was: run it with the code before the change and after it (two virtual environments,
# e.g. one in a `git worktree` of the old commit), then compare the two folders' metrics.jsonl:
#   scripts/refactor_check.sh OLD_VENV outputs/check/before
#   scripts/refactor_check.sh .venv outputs/check/after
#   python scripts/compare_metrics.py outputs/check/before outputs/check/after
# About 3 minutes on a 2-core CPU; one torch thread, environments in this process.
set -uo pipefail   # a failed run is named and the others go on
venv=$1 out=$2
. "$venv/bin/activate"
common="seed=3 progress=false print_config=false hardware.torch_threads=1 hardware.env_workers=0 checkpoint_interval=100000"
run() { name=$1; shift; rm -rf "$out/$name"; marlrun train $common "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; }
mkdir -p "$out"
run super_ddqn total_steps=3000 log_interval=500 eval_interval=1500 eval_episodes=2 hardware.num_envs=2
run super_ddqn_ps algo.parameter_sharing=true algo.sharing=stochastic total_steps=2000 log_interval=500 eval_interval=1000 eval_episodes=2 hardware.num_envs=2
run super_ddqn_pz env.backend=pettingzoo env.x_size=8 env.y_size=8 env.n_pursuers=3 env.n_evaders=4 env.max_cycles=50 total_steps=1600 log_interval=400 eval_interval=800 eval_episodes=2 hardware.num_envs=2 algo.learning_starts=200
run qmix algo=qmix algo.standardise_rewards=true total_steps=3000 log_interval=500 eval_interval=1500 eval_episodes=2 hardware.num_envs=2
run vdn algo=qmix algo.mixer=vdn total_steps=2000 log_interval=500 eval_interval=1000 eval_episodes=2 hardware.num_envs=2
run ippo experiment=ppo_pursuit total_steps=8192 log_interval=2048 eval_interval=4096 eval_episodes=2 hardware.num_envs=8 algo.rollout_steps=64
run mappo experiment=ppo_pursuit algo=mappo total_steps=8192 log_interval=2048 eval_interval=4096 eval_episodes=2 hardware.num_envs=8 algo.rollout_steps=64
run maddpg experiment=maddpg_adversary total_steps=3000 log_interval=500 eval_interval=1500 eval_episodes=4 algo.learning_starts=1000 hardware.num_envs=2
run mappo_adv experiment=mappo_adversary total_steps=3200 log_interval=800 eval_interval=1600 eval_episodes=4
run mfq_battle experiment=mfq_battle env.map_size=16 env.max_cycles=50 total_steps=300 log_interval=100 eval_interval=150 eval_episodes=2 algo.learning_starts=50 hardware.num_envs=2
run mfq_ising experiment=mfq_ising env.L=8 total_steps=400 log_interval=100 eval_interval=200 eval_episodes=2 hardware.num_envs=2
run mcmc experiment=mcmc_ising env.L=8 total_steps=200 log_interval=50 eval_interval=100 eval_episodes=2
# resumed runs: a checkpoint written and read back by the same code
run resume_ddqn total_steps=1000 log_interval=500 eval_interval=1000 eval_episodes=2 hardware.num_envs=2
marlrun train resume="$out/resume_ddqn" total_steps=2000 progress=false >> "$out/resume_ddqn.log" 2>&1 || echo "resume_ddqn resume failed"
run resume_mfq experiment=mfq_battle env.map_size=16 env.max_cycles=50 total_steps=200 log_interval=100 eval_interval=100 eval_episodes=2 algo.learning_starts=50 hardware.num_envs=2
marlrun train resume="$out/resume_mfq" total_steps=400 progress=false >> "$out/resume_mfq.log" 2>&1 || echo "resume_mfq resume failed"
run resume_ppo experiment=ppo_pursuit total_steps=4096 log_interval=1024 eval_interval=2048 eval_episodes=2 hardware.num_envs=8 algo.rollout_steps=64 save_replay=false
marlrun train resume="$out/resume_ppo" total_steps=8192 progress=false >> "$out/resume_ppo.log" 2>&1 || echo "resume_ppo resume failed"
