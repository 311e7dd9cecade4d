"""A model as the labeler (rank.labeler=judge): RLAIF, or labels from a stronger model.

Two kinds of judge, told apart by the model directory's config:
  - a reward model (a sequence classifier with one output, such as another run's runs/<name>/reward):
    each answer scores its reward, encoded exactly as the reward stage trained it;
  - a causal LM: each answer scores the mean log-probability of its tokens under the LM. Where the
    prompt has a reference (gold) answer, the LM reads it first ("Reference answer: ..." after the
    question), so an answer that says what the reference says becomes likely: the LM grades
    against the documentation instead of its own taste.
Answers are ranked by score; equal scores are tied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.errors import UserError
from stages.rank.candidates import prompt_messages


def judge_kind(path: str) -> str:
    """"reward" or "lm" from the model's config.json."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise UserError(f"rank.judge={path} is not a model directory (no config.json): give a reward model "
                        "(e.g. runs/<preset>/reward) or a causal LM directory.")
    arch = " ".join(json.loads(config.read_text()).get("architectures") or [])
    if "SequenceClassification" in arch:
        return "reward"
    if "CausalLM" in arch:
        return "lm"
    raise UserError(f"rank.judge={path}: architecture {arch or 'unknown'} is neither a reward model "
                    "(…ForSequenceClassification) nor a causal LM (…ForCausalLM).")


def reference_prompt(record: dict) -> list[dict]:
    """The question, followed by the reference answer where the record has one."""
    from pipeline.judge.gold import with_reference

    return with_reference(prompt_messages(record), record.get("gold"))


class Judge:
    def __init__(self, path: str, device: torch.device, batch_size: int = 32):
        self.path, self.kind, self.batch_size = path, judge_kind(path), batch_size
        if self.kind == "reward":
            from pipeline.judge.scoring import load_reward_model

            self.model, self.tokenizer, stats = load_reward_model(path, dtype=torch.float32, device=device)
            self.max_length = stats.get("max_length")
        else:
            from transformers import AutoTokenizer

            from pipeline.lm.model import load_causal_lm

            self.model = load_causal_lm(path, dtype=torch.float32).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if self.tokenizer.pad_token_id is None:
                raise UserError(f"rank.judge={path}: its tokenizer has no PAD token.")

    def scores(self, record: dict) -> list[float]:
        """One score per answer of a candidates record (higher = better)."""
        if self.kind == "reward":
            from pipeline.judge.scoring import score_conversations

            prompt = prompt_messages(record)
            s = score_conversations(self.model, self.tokenizer, [prompt] * len(record["responses"]),
                                    record["responses"], batch_size=self.batch_size, max_length=self.max_length)
            return [round(float(x), 6) for x in s]
        return self.mean_logprobs(reference_prompt(record), record["responses"])

    def mean_logprobs(self, prompt: list[dict], answers: list[str]) -> list[float]:
        # one model judge, shared with judge.gold=model:DIR
        from pipeline.judge.gold import mean_answer_logprobs

        return mean_answer_logprobs(self.model, self.tokenizer, prompt, answers, self.batch_size)
