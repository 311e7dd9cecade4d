from stages.entry import start

start("reward", "stages.reward.stage")
