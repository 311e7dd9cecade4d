"""Language-modelling metrics on held-out text: loss, perplexity and bits per byte.

Loss and perplexity are per token, so they only compare models that share a tokenizer; bits
per byte divides the same total by the UTF-8 bytes of the text, so it compares any two models.
"""

from __future__ import annotations

import math

from pipeline.generation import context_length, token_nll


def heldout_texts(cfg) -> tuple[list[str] | None, str]:
    """Held-out documents and their source, or (None, why not)."""
    value = cfg.eval.lm_data
    if not value or value.lower() == "none":
        return None, "eval.lm_data=none"
    from data.loaders import iter_texts

    if value == "demo":
        from data.demo import demo_file

        source = str(demo_file(cfg, "pretrain_val"))
    else:
        source = value
    texts = [t for t in iter_texts([source]) if t and t.strip()]
    if not texts:
        return None, f"{source} holds no text"
    return texts, source


def token_windows(tokenizer, texts: list[str], window: int, max_tokens: int) -> list[list[int]]:
    """The documents as one token stream (each ended by EOS, as in pretraining), cut into
    non-overlapping windows of at most `window` tokens, `max_tokens` in all."""
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + eos)
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    return [stream[i:i + window] for i in range(0, len(stream), window) if len(stream[i:i + window]) > 1]


def lm_metrics(model, tokenizer, texts: list[str], *, max_tokens: int, batch_size: int = 8,
               window: int | None = None) -> dict:
    """Mean loss (nats/token), perplexity and bits per byte of the model on `texts`."""
    window = min(window or context_length(model), context_length(model), 1024)
    windows = token_windows(tokenizer, texts, window, max_tokens)
    if not windows:
        return {"loss": None, "perplexity": None, "bits_per_byte": None, "tokens": 0, "bytes": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll = token_nll(model, windows, pad_id=pad, batch_size=batch_size)
    total = sum(sum(x) for x in nll)
    tokens = sum(len(x) for x in nll)
    # The bytes of the predicted tokens (every token but each window's first); EOS has none.
    n_bytes = sum(len(tokenizer.decode(w[1:], skip_special_tokens=True).encode("utf-8")) for w in windows)
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": total / math.log(2) / n_bytes if n_bytes else None,
            "tokens": tokens, "bytes": n_bytes}
