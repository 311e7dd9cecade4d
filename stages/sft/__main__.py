from stages.entry import start

start("sft", "stages.sft.stage")
