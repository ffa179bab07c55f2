"""How often a trained battle policy attacks with an enemy next to it, and without: a run's last checkpoint, one round.

    python scripts/battle_attack_probe.py RUN_DIR [STEPS]

Plays one battle round (STEPS env steps, default 300) with the run's policy (sampled, as in training) and counts, over
red's living agents, the share of steps on which an agent picks an attack (actions 13-20) when an enemy stands in one
of the 8 cells around it, and when none does. Written for MAPPO runs on battle (`experiment=mappo_battle`).
"""

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from marlrun.algos.ppo import PPO
from marlrun.checkpoint import load_checkpoint
from marlrun.config import register_configs, validate
from marlrun.runner import make_env

FIRST_ATTACK = 13  # battle_v4: 13 moves, then 8 attacks


def main(run: Path, steps: int) -> None:
    register_configs()
    cfg = validate(OmegaConf.load(run / ".hydra" / "config.yaml"))
    cpu = torch.device("cpu")
    env = make_env(cfg, 1, 0, cpu)
    algo = PPO(OmegaConf.to_object(cfg.algo), env.spec, 1, cpu, 0)
    env.provide_state = algo.uses_state
    algo.load_state_dict(load_checkpoint(sorted((run / "checkpoints").glob("*.pt"))[-1])["algo"])
    enemy_channel = 4 if cfg.env.minimap_mode else 3  # magent2's view: wall, own team, own hp, [own minimap], enemy, ...
    red = env.spec.team_names.index("red")
    agents = [a for a in range(env.spec.n_agents) if env.spec.teams[a] == env.spec.team_names[red]]
    counts = {True: [0, 0], False: [0, 0]}  # enemy adjacent -> [attacks, steps]
    obs = env.reset()
    for _ in range(steps):
        actions = algo.act(obs, 0, context=env.context())
        view = obs[0, agents]  # [n, 13, 13, C]
        alive = view.flatten(1).abs().sum(1) > 0
        adjacent = view[:, 5:8, 5:8, enemy_channel].flatten(1).sum(1) > 0
        attack = actions[0, agents] >= FIRST_ATTACK
        for near in (True, False):
            mask = alive & (adjacent == near)
            counts[near][0] += int(attack[mask].sum())
            counts[near][1] += int(mask.sum())
        obs = env.step(actions).obs
    env.close()
    for near, (attacks, total) in counts.items():
        print(f"P(attack | {'an enemy adjacent' if near else 'no enemy adjacent'}) = {attacks / max(1, total):.3g} "
              f"over {total} agent-steps")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 300)
