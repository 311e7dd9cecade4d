from pipeline.chain.entry import start


def load():  # the stage's main, imported (with torch) only once it has work to do
    from stages.compare.stage import main

    return main


start("compare", load)
