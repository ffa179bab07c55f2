"""marlrun: a config-driven experiment runner for multi-agent reinforcement learning."""
