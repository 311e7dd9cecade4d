from stages.entry import start

start("compare", "stages.compare.stage")
