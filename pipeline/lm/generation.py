"""Sampling from a causal LM: our own token loop with a KV cache, batched over left-padded prompts.

The one sampling loop of the project: PPO's rollouts, evaluation, the stages' samples and the chat
all call `sample` (or `generate`, its token-list form); the server (`apps/serve`) steps the same
loop's state, `Decoding`, itself, so that requests can join and leave a batch between steps.
Written out instead of calling `model.generate` so that every step is visible (temperature, top-k,
top-p are three lines each), a seeded `torch.Generator` makes results reproducible, callers can
watch each token as it is sampled (the chat streams them; `--show-probs` reads the distribution),
and it is about twice as fast as `model.generate` on small models, whose per-token bookkeeping and
`torch.multinomial` dominate there.
Also: the log-probabilities of given answers, for KL estimates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from pipeline.lm.chat_format import turn_end_ids
from pipeline.lm.forward import positions_from_mask


def eos_ids_of(model, tokenizer) -> set[int]:
    """Every token id that ends a turn: the tokenizer's EOS, the chat template's end of turn
    (`<|im_end|>`, `<|eot_id|>`, ...) and the generation config's."""
    ids = turn_end_ids(tokenizer)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return ids


def chat_stop_ids(model, tokenizer) -> set[int]:
    """Where a live chat stops an answer: every end of turn (eos_ids_of) and any role marker of our chat
    format, since a small model sometimes starts the next turn itself. Training and evaluation stop at
    eos_ids_of alone, so that what they measure is what the model does."""
    from pipeline.lm.tokenizer import ROLE_TOKENS

    vocab = tokenizer.get_vocab()
    return eos_ids_of(model, tokenizer) | {vocab[t] for t in ROLE_TOKENS if t in vocab}


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def _per_row(value, logits: torch.Tensor):
    """A per-row setting (a tensor, one value per row) as a [B, 1] column; a number stays a number."""
    return value.to(logits.device, logits.dtype).reshape(-1, 1) if torch.is_tensor(value) else value


def shape_logits(logits: torch.Tensor, temperature, top_k: int = 0, top_p=1.0) -> torch.Tensor:
    """Logits of the distribution we sample from: divided by the temperature, then truncated.

    softmax(logits / T): T < 1 sharpens the distribution towards the top token, T > 1 flattens
    it. top_k keeps the k most likely tokens; top_p keeps the smallest set whose probability
    reaches p. Removed tokens get -inf. T <= 0 means greedy and is handled by `pick_tokens`.
    `temperature` and `top_p` are numbers, or tensors of one value per row (a server's batch mixes
    requests with different settings).
    """
    logits = logits.float()
    if torch.is_tensor(temperature):
        temperature = _per_row(temperature, logits)
        logits = logits / torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    elif temperature > 0:
        logits = logits / temperature
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = _per_row(top_p, logits)
    truncating = (top_p > 0) & (top_p < 1)
    if bool(truncating if isinstance(truncating, bool) else truncating.any()):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens above it already reach top_p (the top token always stays).
        drop_sorted = ((cum - sorted_logits.softmax(-1)) >= top_p) & truncating
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row from exactly softmax(logits), by inverting the cumulative distribution
    with one uniform number per row: ~20x cheaper than `torch.multinomial` over a 4k vocabulary.
    A token of probability 0 (logit -inf) is never drawn: its cumulative sum equals its predecessor's.
    A list of generators, one per row, makes each row's draws independent of the other rows."""
    cdf = torch.softmax(logits.float(), -1).cumsum(-1)
    if isinstance(generator, Sequence):
        u = torch.cat([torch.rand(1, 1, generator=g) for g in generator]).to(cdf.device)
    else:
        u = torch.rand(cdf.size(0), 1, device=cdf.device, generator=generator)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.size(-1) - 1).squeeze(-1)


def pick_tokens(logits: torch.Tensor, temperature, top_k: int = 0, top_p=1.0,
                generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from the shaped distribution.
    With one temperature per row (a tensor), the rows at temperature 0 take their argmax."""
    if not torch.is_tensor(temperature):
        if temperature <= 0:
            return logits.argmax(-1)
        return draw(shape_logits(logits, temperature, top_k, top_p), generator)
    drawn = draw(shape_logits(logits, temperature, top_k, top_p), generator)
    return torch.where(temperature.to(logits.device) > 0, drawn, logits.argmax(-1))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` in current transformers
    (`past_key_values` is deprecated there and warns), `past_key_values` in older ones."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA model passes it on
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class Decoding:
    """The state of the sampling loop between steps: left-padded rows, their KV cache, the attention
    mask, and the next-token logits of every row.

    `sample` runs it to the end for one batch. A server keeps one open and changes its rows between
    steps: `keep` drops rows that ended, `extend` appends the rows of another Decoding (requests that
    arrived meanwhile), so one forward per step serves every request in flight.
    """

    @torch.no_grad()
    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor):
        self.model, self.mask = model, mask.long()
        # A transformers config tells the cache each layer's kind; a model without one (the bigram
        # baseline keeps no past) gets a plain cache it never fills.
        config = model.config if hasattr(model.config, "get_text_config") else None
        self.cache = DynamicCache(config=config)
        self.cache_argument = _cache_argument(model)
        self.positions = positions_from_mask(self.mask)
        self.logits = self._forward(ids, self.positions)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        res = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self.cache_argument: self.cache})
        return res.logits[:, -1]

    @property
    def rows(self) -> int:
        return self.mask.size(0)

    @torch.no_grad()
    def advance(self, tokens: torch.Tensor) -> None:
        """Feed one token per row: only the new tokens go through the model, the cache holds the past."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], 1)
        self.positions = self.positions[:, -1:] + 1
        self.logits = self._forward(tokens[:, None], self.positions)

    def can_regroup(self) -> bool:
        """Whether rows can be dropped and joined: every layer a plain growing cache (a sliding-window
        layer keeps a window that left padding would shift)."""
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows; columns that are padding in every remaining row are cut off."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        self.cache.batch_select_indices(index)
        real = self.mask.any(0).nonzero()
        cut = int(real[0]) if len(real) else 0
        if cut:
            self.mask = self.mask[:, cut:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]

    def extend(self, other: Decoding) -> None:
        """Append `other`'s rows below ours; the shorter side is left-padded to the longer one."""
        width = max(self.mask.size(1), other.mask.size(1))

        def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
            pad = width - t.size(dim)
            if pad == 0:
                return t
            shape = list(t.shape)
            shape[dim] = pad
            return torch.cat([t.new_zeros(shape), t], dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([widen(mine.keys, 2), widen(theirs.keys, 2)])
            mine.values = torch.cat([widen(mine.values, 2), widen(theirs.values, 2)])
        self.mask = torch.cat([widen(self.mask, 1), widen(other.mask, 1)])
        self.positions = torch.cat([self.positions[:, -1:], other.positions[:, -1:]])
        self.logits = torch.cat([self.logits, other.logits])


@torch.no_grad()
def sample(model, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int, eos_ids: set[int], pad_id: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """[B, <= max_new_tokens] answers to left-padded prompts `ids` (mask 1 on real tokens), PAD
    after a row's EOS; stops as soon as every row has ended.

    Left padding puts every row's next token in the last column; position ids come from the mask,
    so padding does not shift RoPE positions. After the first forward only the new token is fed,
    with the KV cache holding the past, and only the last position's logits are computed.
    `on_step(step, logits, tokens)` sees the raw next-token logits and the picked tokens.
    """
    b = ids.size(0)
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    eos = torch.tensor(sorted(eos_ids), device=ids.device)
    state = Decoding(model, ids, mask)
    for t in range(max_new_tokens):
        logits = state.logits
        tokens = pick_tokens(logits, temperature, top_k, top_p, generator).masked_fill_(done, pad_id)
        if on_step is not None:
            on_step(t, logits, tokens)
        out[:, t] = tokens
        done |= torch.isin(tokens, eos)
        if bool(done.all()):
            return out[:, :t + 1]
        if t + 1 < max_new_tokens:
            # Finished rows keep receiving PAD; their outputs are ignored, so no need to mask them.
            state.advance(tokens)
    return out


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: set[int], pad_id: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None,
             on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> list[list[int]]:
    """`sample` for prompts given as token lists; returns each answer's ids, ending with EOS if it ended."""
    ids, mask = left_pad(prompts, pad_id, next(model.parameters()).device)
    out = sample(model, ids, mask, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                 temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, on_step=on_step)
    answers = []
    for row in out.tolist():
        end = next((i for i, t in enumerate(row) if t in eos_ids), None)
        answers.append(row if end is None else row[:end + 1])
    return answers


def generate_batched(model, prompts: Sequence[Sequence[int]], *, batch_size: int, bar=None,
                     **kwargs) -> list[list[int]]:
    """`generate` over many prompts, in batches of similar length (less padding); input order kept.
    `bar` (a progress bar) advances by the prompts of each finished batch."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[list[int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, ans in zip(chunk, generate(model, [prompts[i] for i in chunk], **kwargs)):
            answers[i] = ans
        if bar is not None:
            bar.update(len(chunk))
    return answers  # type: ignore[return-value]


@torch.no_grad()
def answer_logprobs(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, pad_id: int,
                    temperature: float = 1.0, batch_size: int = 16) -> list[list[float]]:
    """log p(answer token | prompt, earlier answer tokens) for every answer token.

    Logits are divided by the temperature (when > 0) so that the numbers describe the same
    distribution the answers were sampled from, as PPO's rollouts do.
    """
    device = next(model.parameters()).device
    result: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [list(p) + list(a) for p, a in zip(prompts[start:start + batch_size], answers[start:start + batch_size])]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        if temperature > 0:
            logits = logits / temperature
        logp = logits[:, :-1].log_softmax(-1).gather(-1, ids.to(device)[:, 1:, None]).squeeze(-1).cpu()
        for i, (p, a) in enumerate(zip(prompts[start:start + batch_size], answers[start:start + batch_size])):
            first = len(p) - 1  # the logit at position t predicts token t+1
            result.append(logp[i, first:first + len(a)].tolist())
    return result


@torch.no_grad()
def token_nll(model, windows: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 8) -> list[list[float]]:
    """Negative log-likelihood (nats) of every token after the first in each window."""
    zeros = [[w[0]] for w in windows]
    rest = [list(w[1:]) for w in windows]
    lps = answer_logprobs(model, zeros, rest, pad_id=pad_id, temperature=0, batch_size=batch_size)
    return [[-x for x in lp] for lp in lps]
