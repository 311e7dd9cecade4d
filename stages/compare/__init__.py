"""`make compare`: SFT against every aligned model of the run (PPO, DPO, GRPO, RLOO) in one report."""
