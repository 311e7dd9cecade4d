"""Library noise, turned off at the source: what a stage prints is its own progress and results."""

from __future__ import annotations

# transformers draws a bar per checkpoint it loads or writes ("Loading weights: 100%| 39/39"): for the
# models here, lines of library noise between a stage's own messages, twice per checkpoint save. Hub
# downloads draw their bars through huggingface_hub and keep them: those are worth watching.
_WEIGHT_BARS = frozenset({"Loading weights", "Writing model shards"})


def quiet_weight_bars() -> None:
    """From now on, no progress bar for loading or writing a checkpoint's weights (stage_config calls it)."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):  # an older transformers: its bars stay
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in _WEIGHT_BARS:
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)
