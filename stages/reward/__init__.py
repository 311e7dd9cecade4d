"""Reward stage: a scalar-head model trained on rankings with TRL RewardTrainer."""
