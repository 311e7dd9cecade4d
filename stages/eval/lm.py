"""Language-modelling metrics on held-out text: loss, perplexity and bits per byte.

Loss and perplexity are per token, so they only compare models that share a tokenizer; bits
per byte divides the same total by the UTF-8 bytes of the text, so it compares any two models.
"""

from __future__ import annotations

import math

from pipeline.lm.generation import context_length, token_nll


def heldout_texts(cfg) -> tuple[list[str] | None, str]:
    """Held-out documents and their source, or (None, why not)."""
    value = cfg.eval.lm_data
    if not value or value.lower() == "none":
        return None, "eval.lm_data=none"
    from data.loaders import iter_texts

    if value == "pretrain":  # the documents pretraining held out of train.data
        from data.demo import pretrain_sources
        from data.token_cache import iter_documents

        texts = [t for t in iter_documents(pretrain_sources(cfg), "val", cfg.train.text_field, cfg.train.val_fraction)
                 if t and t.strip()]
        return (texts, "the held-out split of train.data") if texts else (None, "train.data holds out no document")
    if value == "demo":
        from data.demo import demo_file

        source = str(demo_file(cfg, "pretrain_val"))
    else:
        source = value
    texts = [t for t in iter_texts([source]) if t and t.strip()]
    if not texts:
        return None, f"{source} holds no text"
    return texts, source


def token_stream(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[int], list[int]]:
    """The documents as one token stream (each ended by EOS, as in pretraining), at most `max_tokens`,
    and the UTF-8 bytes of the original text each token stands for.

    Bytes come from the original text, not from decoding: a word vocabulary writes text back
    whitespace-normalised and cannot write an unknown word at all. A token owns the text from the
    end of the token before it to its own end (the whitespace before it included); EOS owns the rest
    of its document. A tokenizer that gives no offsets shares each document's bytes evenly."""
    stream: list[int] = []
    owned: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in texts:
        if tokenizer.is_fast:
            enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
            done = 0
            for _, end in enc["offset_mapping"]:
                owned.append(len(text[done:max(done, end)].encode("utf-8")))
                done = max(done, end)
            rest = len(text[done:].encode("utf-8"))
        else:
            enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True)  # markers in text are text
            share, rest = divmod(len(text.encode("utf-8")), max(len(enc["input_ids"]), 1))
            owned += [share] * len(enc["input_ids"])
        stream += enc["input_ids"] + eos
        owned += [rest] if eos else []
        if len(stream) >= max_tokens:
            break
    return stream[:max_tokens], owned[:max_tokens]


def lm_metrics(model, tokenizer, texts: list[str], *, max_tokens: int, batch_size: int = 8,
               window: int | None = None) -> dict:
    """Mean loss (nats/token), perplexity and bits per byte of the model on `texts`, cut into
    non-overlapping windows of at most `window` tokens; and how many scored tokens are unknown."""
    window = min(window or context_length(model), context_length(model), 1024)
    stream, owned = token_stream(tokenizer, texts, max_tokens)
    cuts = [i for i in range(0, len(stream), window) if len(stream[i:i + window]) > 1]
    windows = [stream[i:i + window] for i in cuts]
    if not windows:
        return {"loss": None, "perplexity": None, "bits_per_byte": None, "tokens": 0, "bytes": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll = token_nll(model, windows, pad_id=pad, batch_size=batch_size)
    total = sum(sum(x) for x in nll)
    tokens = sum(len(x) for x in nll)
    # The bytes of the predicted tokens: every token but each window's first.
    n_bytes = sum(sum(owned[i + 1:i + window]) for i in cuts)
    unk = tokenizer.unk_token_id
    unknown = None if unk is None else sum(t == unk for w in windows for t in w[1:])
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": total / math.log(2) / n_bytes if n_bytes else None,
            "tokens": tokens, "bytes": n_bytes, "unknown_tokens": unknown}
