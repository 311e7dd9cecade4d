"""Rollouts: sample answers to left-padded prompts, then score every answer token with the
policy, the frozen reference, the value model and (on the last token) the reward model.

Layout of a rollout sequence (width P + R, identical for every row, so every forward of the
batch sees the same shapes):  [left pad][prompt][response ... EOS][right pad]
Position ids always come from the attention mask, so a row's tokens sit at the same positions
however much left padding it has, in generation and in every later forward.
Logits at position P-1+t predict response token t; values are read at the same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from pipeline.errors import UserError
from pipeline.judge.ensemble import RewardEnsemble
from pipeline.lm import generation
from pipeline.lm.chat_format import encode_chat, turn_end_ids
from pipeline.lm.forward import lean_llama_body, llama_hidden_states
from pipeline.lm.forward import positions_from_mask as position_ids
from stages.ppo.token_logprobs import token_logprobs


@dataclass
class RolloutBatch:
    query_ids: torch.Tensor  # [B, P] left-padded prompts
    query_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] PAD after the first EOS
    response_mask: torch.Tensor  # [B, R] True up to and including the first EOS
    has_eos: torch.Tensor  # [B]
    logprobs: torch.Tensor | None = None  # old policy, temperature-scaled
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    raw_scores: torch.Tensor | None = None  # [B] the reward model's output
    scores: torch.Tensor | None = None  # [B] normalised, clipped, EOS-penalised
    kl: torch.Tensor | None = None  # [B, R] per-token estimator used in the penalty
    rewards: torch.Tensor | None = None  # [B, R]
    non_score_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1).long()

    @property
    def prompt_len(self) -> int:
        return self.query_ids.size(1)

    def __len__(self) -> int:
        return self.query_ids.size(0)

    def select(self, idx: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
                               for f in fields(self)})


def encode_prompts(tokenizer, prompts: list, max_prompt_length: int) -> tuple[list[list[int]], int]:
    """Chat-template each prompt (a user string or a message list) with the generation prompt.

    Returns (token id lists, number dropped for being longer than max_prompt_length): cutting a
    prompt would cut its question or its `<|assistant|>` marker, so long prompts are dropped.
    """
    out, dropped = [], 0
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
        ids = encode_chat(tokenizer, messages, add_generation_prompt=True)
        if len(ids) > max_prompt_length:
            dropped += 1
            continue
        out.append(list(ids))
    return out, dropped


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = generation.left_pad(seqs, pad_id)
    return ids, mask.bool()


def truncate_after_eos(responses: torch.Tensor, eos_id: int | Collection[int], pad_id: int):
    """(responses with PAD after the first EOS, mask up to and including it, has_eos per row).
    `eos_id` may be several ids: EOS and the chat template's end of turn both end an answer."""
    stops = torch.tensor(sorted(_ids(eos_id)), device=responses.device)
    is_eos = torch.isin(responses, stops)
    has_eos = is_eos.any(1)
    # Index of the first EOS, or R (past the end) when there is none.
    first = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, responses.size(1), dtype=torch.long))
    idx = torch.arange(responses.size(1), device=responses.device)[None]
    mask = idx <= first[:, None]
    return responses.masked_fill(~mask, pad_id), mask, has_eos


def sampling_config(tokenizer, max_new_tokens: int, temperature: float, top_k: int = 0, top_p: float = 1.0):
    if temperature <= 0:
        raise UserError("ppo.temperature must be > 0: PPO needs the sampling distribution's log-probabilities.")
    return GenerationConfig(
        do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
        # Every id that ends a turn: a ChatML model ends its answer with <|im_end|>, not EOS.
        min_new_tokens=0, eos_token_id=_one_or_list(turn_end_ids(tokenizer)), pad_token_id=tokenizer.pad_token_id,
        use_cache=True, repetition_penalty=1.0,
    )


def _ids(ids: int | Collection[int] | None) -> set[int]:
    return set() if ids is None else {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}


def _one_or_list(ids: set[int]) -> int | list[int]:
    return next(iter(ids)) if len(ids) == 1 else sorted(ids)


def generate(policy, query_ids: torch.Tensor, query_mask: torch.Tensor, gen_config: GenerationConfig,
             eos_id: int, pad_id: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one answer per prompt, `chunk` prompts at a time, with the KV cache; returns
    (answers with PAD after EOS, mask up to and including EOS, has_eos per row). The answer ends at
    `eos_id` or at any of the config's EOS ids (the chat template's end of turn)."""
    eos_id = _ids(eos_id) | _ids(gen_config.eos_token_id)
    pieces = [generation.sample(policy, query_ids[s:s + chunk], query_mask[s:s + chunk],
                                max_new_tokens=gen_config.max_new_tokens, eos_ids=eos_id, pad_id=pad_id,
                                temperature=gen_config.temperature, top_k=gen_config.top_k or 0,
                                top_p=gen_config.top_p or 1.0)
              for s in range(0, query_ids.size(0), chunk)]
    width = max(p.size(1) for p in pieces)
    responses = torch.cat([F.pad(p, (0, width - p.size(1)), value=pad_id) for p in pieces])
    return truncate_after_eos(responses, eos_id, pad_id)


def response_logprobs(logits: torch.Tensor, response_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) under the temperature-scaled distribution that sampled it."""
    logits = logits.float() / temperature
    # gather - logsumexp: no [B, R, V] log_softmax tensor is kept for the backward.
    return logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


# Causal LMs whose logits are exactly lm_head(last hidden state): no soft-capping or scaling.
PLAIN_HEAD_MODELS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                     "GPT2LMHeadModel")


def plain_causal_lm(model):
    """The HF causal LM under `model` (a LoRA model's base, whose layers carry the adapters) when
    its logits are lm_head(hidden) and nothing else hides in the wrapper's forward; else None."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None  # prompt tuning adds virtual tokens in the wrapper's forward
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm if type(lm).__name__ in PLAIN_HEAD_MODELS else None


def answer_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_ids: torch.Tensor,
                          prompt_len: int, temperature: float) -> torch.Tensor:
    """[B, R] log pi of the real answer tokens (mask 1), 0 at answer padding.

    The output layer and the log-softmax run only on the real answer tokens' states, not on
    every column of the answer: with answers ending at EOS most columns are padding, and the
    vocabulary projection costs as much as the rest of a small model."""
    lm = plain_causal_lm(model)
    keep = attention_mask[:, prompt_len:].bool()
    if lm is None:
        logits = policy_logits(model, input_ids, attention_mask, prompt_len)
        return response_logprobs(logits, response_ids, temperature) * keep
    return logprobs_from_states(lm, answer_states(lm, input_ids, attention_mask, prompt_len), keep, response_ids,
                                temperature)


def answer_states(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[B, R, D] final hidden states at the positions that predict answer tokens (= value positions)."""
    return hidden_states(lm, input_ids, attention_mask, first=prompt_len - 1)[:, :-1]


def logprobs_from_states(lm, states: torch.Tensor, keep: torch.Tensor, response_ids: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """[B, R] log pi of the answer tokens from `answer_states`, 0 where `keep` is False."""
    h = states[keep]
    head = lm.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.bias is None and not (head._forward_hooks or head._forward_pre_hooks):
        lp = token_logprobs(h, head.weight, response_ids[keep], temperature)
    else:  # e.g. an adapter on the output layer
        lp = response_logprobs(head(h), response_ids[keep], temperature)
    return lp.new_zeros(keep.shape).masked_scatter(keep, lp)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int):
    """Drop the columns that are padding in every row of a micro-batch: left of the longest prompt
    and right of the longest answer. Positions come from the mask, so nothing else changes.
    Returns (ids, mask, new prompt_len, answer columns kept)."""
    first = int(attention_mask[:, :prompt_len].any(0).int().argmax())
    kept = max(int(attention_mask[:, prompt_len:].sum(1).max()), 1)
    end = prompt_len + kept
    return input_ids[:, first:end], attention_mask[:, first:end], prompt_len - first, kept


def pad_answer_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.size(1)))


def policy_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits at the positions that predict the response tokens: [B, R, V]."""
    r = input_ids.size(1) - prompt_len
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                use_cache=False, logits_to_keep=r + 1)
    return out.logits[:, :-1]


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, first: int = 0) -> torch.Tensor:
    """Final hidden states [B, T - first, D] of a causal LM's or sequence classifier's backbone,
    positions from the mask; the lean forward for a plain Llama, HF's for anything else."""
    body = lean_llama_body(model)
    if body is not None:
        return llama_hidden_states(body, input_ids, attention_mask, first=first)
    backbone = getattr(model, model.base_model_prefix)
    return backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    use_cache=False).last_hidden_state[:, first:]


def token_values(value_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """V(state before response token t) for every t: the scalar head on every position."""
    return value_model.score(answer_states(value_model, input_ids, attention_mask, prompt_len)).squeeze(-1).float()


def sequence_scores(reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward model's score read at the last real token (the answer's EOS), as it was trained:
    last-token pooling over `<|user|>q<|end|><|assistant|>answer<|end|>`. A reward ensemble
    (reward.ensemble > 1): each member's score, aggregated by ppo.reward_aggregate."""
    if isinstance(reward_model, RewardEnsemble):
        return reward_model.combine(torch.stack([sequence_scores(m, input_ids, attention_mask)
                                                 for m in reward_model.members]))
    last = attention_mask.long().cumsum(1).argmax(1)  # rightmost position whose mask is 1
    first = int(last.min())
    h = hidden_states(reward_model, input_ids, attention_mask, first=first)
    pooled = h[torch.arange(h.size(0), device=h.device), last - first]
    return reward_model.score(pooled).squeeze(-1).float()


def micro_batched(fn: Callable[[slice], torch.Tensor], n: int, size: int) -> torch.Tensor:
    return torch.cat([fn(slice(s, s + size)) for s in range(0, n, size)])
