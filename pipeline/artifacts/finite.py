"""Finite or nothing: a NaN or infinite loss stops a run before it can be checkpointed or committed.

Stages check their losses as they log them (`check_finite`), parameters before each checkpoint
(`check_finite_params`), and `ArtifactWriter.commit` checks the final metrics, so a diverged run
never leaves a model behind, and `require_artifact` refuses an input whose metrics are not finite.
"""

from __future__ import annotations

import math

from pipeline.errors import UserError


class NonFiniteError(UserError):
    """A loss, metric or weight became NaN or infinite."""


def non_finite(values: dict, prefix: str = "") -> list[str]:
    """`name=value` for every float in `values` (nested dicts and lists too) that is NaN or infinite."""
    bad = []
    for k, v in (values or {}).items():
        name = f"{prefix}{k}"
        if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
            v = v.item()
        if isinstance(v, dict):
            bad += non_finite(v, f"{name}.")
        elif isinstance(v, (list, tuple)):
            bad += non_finite({str(i): x for i, x in enumerate(v)}, f"{name}.")
        elif isinstance(v, float) and not math.isfinite(v):
            bad.append(f"{name}={v}")
    return bad


def diverged(stage: str, what: str, step, last_good) -> NonFiniteError:
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
    return NonFiniteError(f"{stage}: {what} is not finite at step {step}: the run diverged (lower the learning rate?); nothing was "
                          f"committed; {where}.")


def check_finite(stage: str, values: dict, *, step, last_good=None) -> None:
    """Raise NonFiniteError naming the step and the last good checkpoint if any value is not finite."""
    bad = non_finite(values)
    if bad:
        raise diverged(stage, ", ".join(bad[:3]), step, last_good)


def check_finite_params(stage: str, model, *, step, last_good=None) -> None:
    """Before a checkpoint: every parameter finite (one reduction per tensor, far cheaper than the write)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise diverged(stage, f"parameter {name}", step, last_good)


def json_safe(x):
    """A report for JSON, which has no NaN/inf: non-finite floats become null (nested dicts and lists too)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x
