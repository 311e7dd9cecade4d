"""`python -m stages.reward.stats`: the reward-stats step (stages/reward/statistics.py), decided "up to
date" before torch is imported."""

from stages.entry import start

if __name__ == "__main__":
    start("reward-stats", "stages.reward.statistics")
