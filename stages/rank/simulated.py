"""The simulated labeler (rank.labeler=gold): data/simulated.py, shared with the simulated person who ranks the
server's answers (apps/serve/feedback_sim.py)."""

from data.simulated import (  # noqa: F401 (the rank stage and its tests import these from here)
    agreement,
    gold_scores,
    label_with_gold,
    plackett_luce,
    positions,
    tiers_by_score,
)
