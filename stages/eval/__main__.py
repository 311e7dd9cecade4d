from stages.entry import start

start("eval", "stages.eval.stage")
