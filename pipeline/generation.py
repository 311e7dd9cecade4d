"""Sampling from a causal LM: our own token loop with a KV cache, batched over left-padded prompts.

The one sampling loop of the project: PPO's rollouts, evaluation, the stages' samples and the chat
all call `sample` (or `generate`, its token-list form). Written out instead of calling
`model.generate` so that every step is visible (temperature, top-k, top-p are three lines each), a
seeded `torch.Generator` makes results reproducible, callers can watch each token as it is sampled
(the chat streams them; `--show-probs` reads the distribution), and it is about twice as fast as
`model.generate` on small models, whose per-token bookkeeping and `torch.multinomial` dominate there.
Also: the log-probabilities of given answers, for KL estimates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipeline.lm_forward import positions_from_mask


def eos_ids_of(model, tokenizer) -> set[int]:
    """Every token id that ends a turn: the tokenizer's EOS and the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return ids


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def shape_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits of the distribution we sample from: divided by the temperature, then truncated.

    softmax(logits / T): T < 1 sharpens the distribution towards the top token, T > 1 flattens
    it. top_k keeps the k most likely tokens; top_p keeps the smallest set whose probability
    reaches p. Removed tokens get -inf. T <= 0 means greedy and is handled by `pick_tokens`.
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens above it already reach top_p (the top token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from exactly softmax(logits), by inverting the cumulative distribution
    with one uniform number per row: ~20x cheaper than `torch.multinomial` over a 4k vocabulary.
    A token of probability 0 (logit -inf) is never drawn: its cumulative sum equals its predecessor's."""
    cdf = torch.softmax(logits.float(), -1).cumsum(-1)
    u = torch.rand(cdf.size(0), 1, device=cdf.device, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1).squeeze(-1)


def pick_tokens(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from the shaped distribution."""
    if temperature <= 0:
        return logits.argmax(-1)
    return draw(shape_logits(logits, temperature, top_k, top_p), generator)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


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
    b, p = ids.shape
    mask = mask.long()
    full_mask = mask.new_ones(b, p + max_new_tokens)
    full_mask[:, :p] = mask
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    eos = torch.tensor(sorted(eos_ids), device=ids.device)
    step_ids, step_pos, past = ids, positions_from_mask(mask), None
    for t in range(max_new_tokens):
        res = model(input_ids=step_ids, attention_mask=full_mask[:, :p + t], position_ids=step_pos,
                    cache=past, use_cache=True, logits_to_keep=1)
        past = res.cache
        logits = res.logits[:, -1]
        tokens = pick_tokens(logits, temperature, top_k, top_p, generator).masked_fill_(done, pad_id)
        if on_step is not None:
            on_step(t, logits, tokens)
        out[:, t] = tokens
        done |= torch.isin(tokens, eos)
        if bool(done.all()):
            return out[:, :t + 1]
        # Finished rows keep receiving PAD; their outputs are ignored, so no need to mask them.
        step_ids, step_pos = tokens[:, None], step_pos[:, -1:] + 1
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
