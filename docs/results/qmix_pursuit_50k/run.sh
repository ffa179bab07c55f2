#!/bin/bash
# QMIX, VDN and independent DDQN on the default pursuit, 3 seeds, 50k env steps; 2 jobs at a time, 1 thread each
cd /tmp/qsweep
. /work/main/.venv/bin/activate
COMMON="total_steps=50000 eval_interval=10000 eval_episodes=10 log_interval=5000 save_replay=false progress=false print_config=false hardware.env_workers=0 hydra/launcher=joblib hydra.launcher.n_jobs=2"
start=$(date +%s)
marlrun train -m algo=qmix algo.mixer=qmix,vdn seed=0,1,2 $COMMON hydra.sweep.dir=/tmp/qsweep/qmix_vdn
marlrun train -m algo=super_ddqn algo.sharing=none seed=0,1,2 $COMMON hydra.sweep.dir=/tmp/qsweep/ddqn
echo "wall $(( $(date +%s) - start )) s"
