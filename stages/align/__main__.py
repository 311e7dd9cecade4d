from stages.entry import start

start("align", "stages.align.stage")
