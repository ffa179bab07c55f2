#!/bin/bash
# side by side, nothing else running: env steps per second of training, each framework alone on one thread
cd /work/main; export OMP_NUM_THREADS=1
out=/work/byo_runs/speed; rm -rf $out; mkdir -p $out
for rep in 1 2; do
  /work/main/.venv/bin/marlrun train experiment=mappo_navigation total_steps=96000 eval_interval=0 eval_episodes=1 checkpoint_interval=1000000 hardware.torch_threads=1 progress=false print_config=false hydra.run.dir=$out/mr_nav_$rep > /dev/null 2>&1
  /work/bm/bin/python scripts/benchmarl_baseline.py --task vmas/navigation --seed 0 --frames 30000 --eval-every 30000 --eval-episodes 1 --out $out/bm_nav_$rep > /dev/null 2>&1
  /work/main/.venv/bin/marlrun train experiment=mappo_simple_spread total_steps=48000 eval_interval=0 eval_episodes=1 checkpoint_interval=1000000 hardware.torch_threads=1 progress=false print_config=false hydra.run.dir=$out/mr_ss_$rep > /dev/null 2>&1
  /work/bm/bin/python scripts/benchmarl_baseline.py --task simple_spread --seed 0 --frames 18000 --eval-every 18000 --eval-episodes 1 --out $out/bm_ss_$rep > /dev/null 2>&1
done
for f in $out/*/summary.json; do echo "$f $(python3 -c "import json,sys; d=json.load(open('$f')); print(d['env_steps'], d['wall_time_s'], d['steps_per_sec'])")"; done
