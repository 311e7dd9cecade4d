"""The bigram baseline of a pretraining run, fitted on the GPT's training tokens and measured on the
very windows of validation tokens the GPT's validation loss is measured on, so the two numbers differ
only by the model. Counting draws no random numbers: the GPT's training is unchanged by it."""

from __future__ import annotations

import math

import numpy as np

from pipeline.lm.bigram import BigramLM
from pipeline.lm.word_tokenizer import count_unknown
from stages.pretrain.loop import eval_window_starts


def fit_bigram(train_tokens, val_tokens, vocab_size: int, *, block: int, n_windows: int,
               bytes_per_token: float) -> tuple[BigramLM, dict]:
    """The fitted bigram and its held-out metrics (loss in nats per token, bits per byte, the chosen k)."""
    bigram = BigramLM.fit(np.asarray(train_tokens), vocab_size)
    val = np.asarray(val_tokens, dtype=np.int64)
    block = min(block, len(val) - 1)
    windows = np.stack([val[s:s + block + 1] for s in eval_window_starts(len(val), block, n_windows)])
    loss = float(bigram.nll(windows[:, :-1].ravel(), windows[:, 1:].ravel()).mean())
    return bigram, {"bigram_val_loss": loss, "bigram_val_bpb": loss / math.log(2) / bytes_per_token,
                    "bigram_k": bigram.k}


def unknown_tokens(tokenizer, val_tokens) -> dict:
    """How many held-out tokens are <|unk|> (nothing for a tokenizer that has no unknown token)."""
    if tokenizer.unk_token_id is None:
        return {}
    n = count_unknown(tokenizer, val_tokens)
    return {"val_unknown_tokens": n, "val_unknown_share": n / max(len(val_tokens), 1)}
