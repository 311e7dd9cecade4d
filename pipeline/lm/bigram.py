"""The bigram baseline: the first language model of the lecture, by counting.

    p(next | prev) = (count(prev, next) + k) / (count(prev) + k * V)

Counts of every adjacent token pair in the training tokens, with add-k smoothing so that a pair
never seen still has some probability. Every pretraining run fits one on the GPT's own tokens, so
the GPT's held-out loss and bits per byte have a floor to beat. k is chosen on a development
slice of the training tokens (their last 10%, counted without it), never on held-out text.

`BigramLM` is a torch module with the call signature of a Hugging Face causal LM
(`model(input_ids=..., attention_mask=..., logits_to_keep=...).logits`), so the project's one
sampling loop (`pipeline.lm.generation.sample`) and the evaluation's loss code run it unchanged.
Its parameters are the pair counts themselves, stored sparsely (a word vocabulary of 8k tokens
would need 64M dense cells); `logits` are the log-probabilities above.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

FILE = "bigram.safetensors"
K_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def pair_counts(tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted pair codes `prev * V + next` of the adjacent pairs in `tokens`, and their counts."""
    t = np.asarray(tokens, dtype=np.int64)
    codes, counts = np.unique(t[:-1] * vocab_size + t[1:], return_counts=True)
    return codes, counts.astype(np.int64)


def pair_nll(codes: np.ndarray, counts: np.ndarray, vocab_size: int, k: float, prev: np.ndarray,
             nxt: np.ndarray) -> np.ndarray:
    """-log p(nxt | prev) in nats for each pair, from the counts (any token ids below vocab_size)."""
    prev, nxt = np.asarray(prev, dtype=np.int64), np.asarray(nxt, dtype=np.int64)
    row_total = np.bincount(codes // vocab_size, weights=counts, minlength=vocab_size)
    query = prev * vocab_size + nxt
    at = np.clip(np.searchsorted(codes, query), 0, max(len(codes) - 1, 0))
    seen = counts[at] * (codes[at] == query) if len(codes) else np.zeros(len(query))
    return np.log(row_total[prev] + k * vocab_size) - np.log(seen + k)


def choose_k(tokens: np.ndarray, vocab_size: int, dev_share: float = 0.1) -> float:
    """The k of K_GRID with the lowest loss on the last `dev_share` of `tokens`, counted on the rest."""
    t = np.asarray(tokens, dtype=np.int64)
    cut = int(len(t) * (1 - dev_share))
    if cut < 2 or len(t) - cut < 2:
        return 1.0
    codes, counts = pair_counts(t[:cut], vocab_size)
    dev = t[cut:]
    losses = {k: pair_nll(codes, counts, vocab_size, k, dev[:-1], dev[1:]).mean() for k in K_GRID}
    return min(losses, key=losses.get)


class BigramLM(nn.Module):
    """A count-based bigram language model that `pipeline.lm.generation.sample` can sample from."""

    def __init__(self, codes: np.ndarray, counts: np.ndarray, vocab_size: int, k: float):
        super().__init__()
        if k <= 0:
            raise ValueError("add-k smoothing needs k > 0 (an unseen pair would have probability 0)")
        self.vocab_size, self.k = int(vocab_size), float(k)
        # The counts are the model: parameters in the torch sense, never trained by gradient.
        self.codes = nn.Parameter(torch.as_tensor(np.asarray(codes, dtype=np.int64)), requires_grad=False)
        self.counts = nn.Parameter(torch.as_tensor(np.asarray(counts, dtype=np.float64)), requires_grad=False)
        rows = self.codes // self.vocab_size
        self.register_buffer("row_start", torch.searchsorted(rows, torch.arange(self.vocab_size + 1)),
                             persistent=False)
        self.register_buffer("row_total", torch.zeros(self.vocab_size, dtype=torch.float64)
                             .index_add_(0, rows, self.counts), persistent=False)
        self.config = SimpleNamespace(vocab_size=self.vocab_size, max_position_embeddings=1024)  # any length works

    @classmethod
    def fit(cls, tokens: np.ndarray, vocab_size: int, k: float | None = None) -> BigramLM:
        """Count the pairs of `tokens`; k=None chooses it on a development slice (see choose_k)."""
        k = choose_k(tokens, vocab_size) if k is None else k
        return cls(*pair_counts(tokens, vocab_size), vocab_size, k)

    def nll(self, prev, nxt) -> np.ndarray:
        """-log p(nxt | prev) in nats for each given pair."""
        return pair_nll(self.codes.numpy(), self.counts.numpy(), self.vocab_size, self.k, prev, nxt)

    def log_probs(self, prev: torch.Tensor) -> torch.Tensor:
        """[..., V] log p(· | prev) for a tensor of previous tokens."""
        flat = prev.reshape(-1).long().cpu()
        starts, stops = self.row_start[flat], self.row_start[flat + 1]
        lengths = stops - starts
        out = torch.full((flat.numel(), self.vocab_size), math.log(self.k), dtype=torch.float64)
        row = torch.repeat_interleave(torch.arange(flat.numel()), lengths)
        offset = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        entry = torch.repeat_interleave(starts, lengths) + offset
        out[row, self.codes[entry] % self.vocab_size] = torch.log(self.counts[entry] + self.k)
        out -= torch.log(self.row_total[flat] + self.k * self.vocab_size)[:, None]
        return out.float().reshape(*prev.shape, self.vocab_size).to(prev.device)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, **_ignored):
        """The HF causal-LM call: logits at every position (or the last `logits_to_keep`); the past
        is the previous token alone, so there is no cache and attention mask and positions do not matter."""
        ids = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        return SimpleNamespace(logits=self.log_probs(ids), past_key_values=None)

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(directory) / FILE
        save_file({"codes": self.codes.numpy(), "counts": self.counts.numpy()}, str(path),
                  metadata={"vocab_size": str(self.vocab_size), "k": json.dumps(self.k)})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> BigramLM | None:
        """The bigram saved in a pretraining artifact, or None when it has none."""
        from safetensors import safe_open

        path = Path(directory) / FILE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata()
            return cls(f.get_tensor("codes"), f.get_tensor("counts"), int(meta["vocab_size"]), json.loads(meta["k"]))
