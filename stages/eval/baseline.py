"""The bigram baseline in the evaluation, and the temperature sweep's prompt.

A pretraining artifact holds the bigram model fitted on its training tokens (pipeline.lm.bigram);
the evaluation scores it on the same held-out text, with the same tokenizer and the same
windows as its GPT, so it is the language-modelling table's first row: the floor to beat."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from pipeline.lm.bigram import BigramLM
from pipeline.lm.temperature_sweep import temperature_sweep
from stages.eval.lm import lm_metrics


def bigram_baseline(paths: list[str], texts: list[str], e) -> tuple[dict | None, list[dict] | None]:
    """The bigram of the first of `paths` that has one: its LM row ({"path", "k", "lm"}) and its
    temperature sweep; (None, None) when none has one. `e` is the eval section of the config."""
    for path in paths:
        bigram = BigramLM.load(path) if Path(path).is_dir() else None
        if bigram is None:
            continue
        tok = AutoTokenizer.from_pretrained(path)
        # The GPT's windows, as lm_metrics cuts them for it, so both score the same tokens.
        window = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or 2048)
        lm = lm_metrics(bigram, tok, texts, max_tokens=e.lm_max_tokens, batch_size=max(1, e.batch_size // 4),
                        window=window)
        sweep = temperature_sweep(bigram, tok, prompt_ids(tok, sweep_prompt(texts)), seed=e.seed,
                                  max_new_tokens=e.max_new_tokens)
        return {"path": path, "k": bigram.k, "lm": lm}, sweep
    return None, None


def sweep_prompt(texts: list[str] | None, n_words: int = 8) -> str | None:
    """The temperature sweep's prompt: the first words of the first held-out document."""
    return " ".join(texts[0].split()[:n_words]) if texts else None


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """EOS (a document starts) + the prompt's tokens, as pretraining saw documents."""
    return [tokenizer.eos_token_id, *tokenizer(prompt, add_special_tokens=False, split_special_tokens=True)["input_ids"]]
