"""The judge: generate answers, score them (reward model, gold), compare two models with intervals, the verdict."""
