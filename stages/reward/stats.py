"""`python -m stages.reward.stats`: the reward-stats step (stages/reward/statistics.py), decided "up to
date" before torch is imported."""

from pipeline.chain.entry import start


def load():  # the step's main, imported (with torch) only once it has work to do
    from stages.reward.statistics import main

    return main


if __name__ == "__main__":
    start("reward-stats", load)
