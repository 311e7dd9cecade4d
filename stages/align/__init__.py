"""Alignment beside PPO: DPO, GRPO and RLOO of the SFT model on TRL's trainers (`align.method`)."""
