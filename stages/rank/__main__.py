from stages.entry import start

start("rank", "stages.rank.stage")
