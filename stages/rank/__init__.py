"""Rank stage: the model answers each prompt K times and a labeler ranks the answers."""
