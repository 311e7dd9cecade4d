from stages.entry import start

start("pretrain", "stages.pretrain.stage")
