"""Rank stage: the policy's own answers ranked by a simulated person, a real one or a judge model."""
