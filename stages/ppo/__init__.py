"""PPO stage: RLHF of the SFT policy against the reward model (see trainer.py for the loop)."""
