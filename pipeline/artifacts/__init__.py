"""Artifacts on disk: atomic writes, the keyed resume scheme, the run lock, manifests and fingerprints, checkpoints and the metrics log."""
