"""The trained pair behind one forward: the policy and its value estimate.

Without LoRA (and with ppo.lora_value=model) the value is a separate sequence classifier with a
scalar head, initialised from the reward model. With LoRA the policy's base is frozen, so a second
full model would hold most of PPO's memory for the value alone; instead a `ValueHead` reads the
policy's own final hidden states (one base in memory for policy, reference and value):
  * head (default): the adapters on; one forward gives the answer's log-probs and values, and the
    value loss trains the adapters along with the head (a shared trunk);
  * base_head: the adapters off (the SFT model's states, no gradient); only the head trains, the
    policy is left to the policy loss alone.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.ppo.rollout import (
    answer_states,
    answer_token_logprobs,
    logprobs_from_states,
    pad_answer_columns,
    plain_causal_lm,
    token_values,
    trim_padding,
)


class ValueHead(nn.Module):
    """V(state) = w . h + b on the policy's final hidden states; starts at V = 0 (zero weights)."""

    def __init__(self, hidden_size: int, on_adapters: bool = True):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.on_adapters = on_adapters

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.score(states.to(self.score.weight.dtype)).squeeze(-1).float()  # a bf16 base outside autocast


class PolicyAndValue(nn.Module):
    """The two trained networks behind one forward, so DDP syncs both in one backward."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, input_ids, attention_mask, response_ids, prompt_len: int, temperature: float):
        width = response_ids.size(1)
        ids, attn, p, kept = trim_padding(input_ids, attention_mask, prompt_len)
        response_ids = response_ids[:, :kept]
        if isinstance(self.value, ValueHead):
            logprobs, values = self._shared_base(ids, attn, response_ids, p, temperature)
        else:
            logprobs = answer_token_logprobs(self.policy, ids, attn, response_ids, p, temperature)
            values = token_values(self.value, ids, attn, p)
        return pad_answer_columns(logprobs, width), pad_answer_columns(values, width)

    def _shared_base(self, ids, attn, response_ids, p: int, temperature: float):
        lm = plain_causal_lm(self.policy)
        base = self.policy.get_base_model()  # the causal LM whose layers carry the adapters
        if self.value.on_adapters and lm is not None:  # one forward for both
            states = answer_states(lm, ids, attn, p)
            keep = attn[:, p:].bool()
            return logprobs_from_states(lm, states, keep, response_ids, temperature), self.value(states)
        logprobs = answer_token_logprobs(self.policy, ids, attn, response_ids, p, temperature)
        if self.value.on_adapters:
            return logprobs, self.value(answer_states(base, ids, attn, p))
        with torch.no_grad(), self.policy.disable_adapter():
            states = answer_states(base, ids, attn, p)
        return logprobs, self.value(states)
