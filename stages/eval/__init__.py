"""Evaluation stage: held-out comparison of the run's models (LM metrics, RM and gold win rates, KL, plots)."""
