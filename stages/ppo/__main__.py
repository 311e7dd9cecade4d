from stages.entry import start

start("ppo", "stages.ppo.stage")
