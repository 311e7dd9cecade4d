"""The process a stage runs in: device and threads, seeds, which process writes, library noise."""
