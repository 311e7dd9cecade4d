"""The process a stage runs in: device and threads, seeds and checkpoint RNG state, the metrics log."""
