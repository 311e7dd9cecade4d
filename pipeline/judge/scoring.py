"""Scoring chat conversations with a reward model, exactly as the reward stage trained it.

One encoding is shared by training, evaluation and every consumer (PPO, eval):
the chat template renders `prompt messages + assistant response` (the template closes the
answer with EOS or its end-of-turn token, where the encoding ends, as a sampled answer does), and a conversation longer than `max_length` keeps its *last* tokens, so the
response and its final EOS -- where the model's own last-token pooling reads the reward -- are
never cut. Training drops a pair whose response alone does not fit; scoring cannot drop, so it
scores the last `max_length` tokens.

    model, tok, stats = load_reward_model("runs/tiny/reward")
    scores = score_conversations(model, tok, [[{"role": "user", "content": "hi"}]], ["hello"],
                                 max_length=stats["max_length"])
    normalised = (scores - stats["mean"]) / stats["std"]

The reward an RL stage optimises is one more step: `process_scores` (normalise by the reward
stage's statistics, clip, penalise answers cut without EOS). PPO calls it on its rollouts;
`RewardFunction` wraps model + `process_scores` as a TRL reward function for GRPO and RLOO.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.lm.chat_format import close_at_turn_end, encode_chat, turn_end_ids

STATS_FILE = "reward_stats.json"  # in a reward-stats artifact: PPO's normalisation
TRAINING_FILE = "reward_model.json"  # in a reward artifact: what it was trained on (max_length)

Messages = list[dict]


def as_messages(response: str | Messages) -> Messages:
    """A response as a list of chat messages (a bare string is one assistant turn)."""
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return list(response)


def encode_conversation(tokenizer, prompt: Messages, response: str | Messages,
                        max_length: int | None) -> tuple[list[int], str]:
    """Token ids of prompt + response and what happened to them: "ok", "truncated" (the prompt
    lost its oldest tokens to fit) or "too_long" (the response alone does not fit; ids are the
    last `max_length` tokens anyway, which is what scoring uses)."""
    ids = _chat_ids(tokenizer, list(prompt) + as_messages(response))
    if max_length is None or len(ids) <= max_length:
        return ids, "ok"
    prompt_len = len(_chat_ids(tokenizer, list(prompt), add_generation_prompt=True)) if prompt else 0
    response_len = len(ids) - prompt_len
    # keep at least one prompt token (the assistant marker) besides the whole response
    status = "truncated" if response_len < max_length else "too_long"
    return ids[-max_length:], status


def _chat_ids(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> list[int]:
    ids = encode_chat(tokenizer, list(messages), add_generation_prompt=add_generation_prompt)
    if add_generation_prompt:
        return ids
    # End at the answer's end-of-turn token, as a sampled answer does (ChatML writes a newline after it).
    return close_at_turn_end(tokenizer, ids)


def pad_batch(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask (the HF sequence classifier pools at the last
    non-pad token, so padding must be on the right and PAD must differ from EOS)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def score_ids(model, seqs: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Reward of each token sequence (float32, on the CPU), batched by similar length."""
    if not seqs:
        return torch.zeros(0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = torch.empty(len(seqs))
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id, device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            scores[idx] = logits[:, 0].float().cpu()
    finally:
        model.train(was_training)
    return scores


def score_conversations(model, tokenizer, prompts_msgs: list[Messages], responses: list[str | Messages],
                        batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
    """Scalar reward of each (prompt messages, response) pair: a float32 CPU tensor of shape [N].

    `responses[i]` is the assistant's answer as a string (or a list of messages). `max_length`
    should be the reward model's training length (`reward_model.json["max_length"]`); None
    uses the model's position limit."""
    if len(prompts_msgs) != len(responses):
        raise ValueError(f"{len(prompts_msgs)} prompts but {len(responses)} responses")
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise UserError("the reward tokenizer needs a PAD token distinct from EOS (see pipeline.lm.tokenizer).")
    seqs = [encode_conversation(tokenizer, p, r, max_length)[0] for p, r in zip(prompts_msgs, responses)]
    return score_ids(model, seqs, tokenizer.pad_token_id, batch_size)


def read_reward_stats(path: str | Path) -> dict:
    """`reward_stats.json` of a reward-stats artifact (`make reward-stats`): the mean/std of the reward
    model's scores of the policy's own answers, which PPO, GRPO and RLOO normalise every reward by."""
    f = Path(path) / STATS_FILE
    if not f.is_file():
        raise UserError(f"{f} is missing: {path} is not a reward-stats artifact; run `make reward-stats`.")
    return json.loads(f.read_text())


def load_reward_model(path: str | Path, *, dtype=None, device=None):
    """(model, tokenizer, info) of a reward artifact: info holds the training `max_length` ({} for a
    foreign reward model)."""
    from transformers import AutoTokenizer

    from pipeline.lm.loading import load_sequence_scorer, loading

    model = load_sequence_scorer(path, "reward model", trained_head=True, dtype=dtype)
    with loading(path, "reward model's tokenizer", model=False, tokenizer=True):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if device is not None:
        model.to(device)
    model.eval()
    info = Path(path) / TRAINING_FILE
    return model, tokenizer, json.loads(info.read_text()) if info.is_file() else {}


def process_scores(raw: torch.Tensor, has_eos: torch.Tensor, mean: float, std: float, *, clip: float | None,
                   missing_eos_penalty: float | None, mode: str = "subtract") -> torch.Tensor:
    """The sequence-level reward: the RM score normalised by the reward stage's mean/std, optionally
    clipped to [-clip, clip], then penalised where the answer hit the length limit without EOS
    (mode "subtract": score - penalty; "replace": -penalty)."""
    scores = (raw - mean) / std
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    if missing_eos_penalty is not None:
        if mode == "subtract":
            penalised = scores - missing_eos_penalty
        elif mode == "replace":
            penalised = torch.full_like(scores, -missing_eos_penalty)
        else:
            raise ValueError(f"unknown missing_eos_mode {mode!r}; use subtract or replace")
        scores = torch.where(has_eos, scores, penalised)
    return scores


class RewardFunction:
    """PPO's reward as a TRL reward function (GRPOTrainer / RLOOTrainer `reward_funcs`).

    TRL hands over each prompt and the sampled answer's token ids, cut after the first EOS; the
    reward model reads chat-formatted prompt ids + those answer ids -- the sequence PPO scores --
    and `process_scores` applies PPO's normalisation, clip and missing-EOS penalty with PPO's
    settings. So PPO, GRPO and RLOO optimise the same number for the same answer.
    """

    __name__ = "reward_model"  # TRL names its reward columns after the function

    def __init__(self, model, tokenizer, *, mean: float = 0.0, std: float = 1.0, clip: float | None = None,
                 missing_eos_penalty: float | None = None, missing_eos_mode: str = "subtract",
                 batch_size: int = 32):
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise UserError("the reward tokenizer needs a PAD token distinct from EOS (see pipeline.lm.tokenizer).")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.mean, self.std = float(mean), float(std) or 1.0
        self.clip, self.penalty, self.mode = clip, missing_eos_penalty, missing_eos_mode
        self.scored = 0  # answers scored so far: the budget an RL stage reports

    def score_ids(self, prompt_ids: list[list[int]], answer_ids: list[list[int]]) -> torch.Tensor:
        """Processed reward of each answer (token ids, EOS last where the answer ended)."""
        eos = turn_end_ids(self.tokenizer)
        has_eos = torch.tensor([bool(a) and a[-1] in eos for a in answer_ids])
        raw = score_ids(self.model, [list(p) + list(a) for p, a in zip(prompt_ids, answer_ids)],
                        self.tokenizer.pad_token_id, self.batch_size)
        self.scored += len(answer_ids)
        return process_scores(raw, has_eos, self.mean, self.std, clip=self.clip,
                              missing_eos_penalty=self.penalty, mode=self.mode)

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]], log_metric=None,
                 **_) -> list[float]:
        prompt_ids = [_chat_ids(self.tokenizer, as_prompt(p), add_generation_prompt=True) for p in prompts]
        scores = self.score_ids(prompt_ids, completion_ids)
        if log_metric is not None:  # TRL averages these into its logs, beside the reward
            eos = turn_end_ids(self.tokenizer)
            log_metric("eos_fraction", sum(bool(a) and a[-1] in eos for a in completion_ids) / len(completion_ids))
        return scores.tolist()


def as_prompt(prompt: str | Messages) -> Messages:
    """A prompt as chat messages (a bare string is one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
