"""Generate: a model's answers to the report prompts, the first step of the judge (pipeline/judge/evaluate.py).

Every report samples the same way: each prompt chat-templated with the generation prompt (a prompt over
the context keeps its last tokens, and the count is printed), answered by the project's one sampling loop
(pipeline.lm.generation) in batches of similar length, from a `torch.Generator` seeded with the report's
seed, so the answers of a model depend only on its weights, the prompts and `Sampling`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from pipeline.artifacts.metrics import progress
from pipeline.judge.comparison import ModelAnswers
from pipeline.lm.chat_format import encode_chat
from pipeline.lm.generation import answer_logprobs, context_length, eos_ids_of, generate_batched


@dataclass(frozen=True)
class Sampling:
    """How a report's answers are sampled. `section` names the config section the values come from, for
    messages ("eval" -> eval.max_new_tokens)."""

    temperature: float
    max_new_tokens: int
    seed: int
    batch_size: int = 32
    top_k: int = 0
    top_p: float = 1.0
    section: str = "eval"


def load_chat_model(path: str, device, dtype=None):
    """(model, tokenizer) of a model directory, ready to answer chat prompts: in `dtype` on a GPU (fp32 on
    the CPU); a tokenizer without a chat template gets ours when it has our role tokens."""
    from transformers import AutoTokenizer

    from pipeline.errors import UserError
    from pipeline.lm.loading import loading
    from pipeline.lm.model import load_causal_lm

    model = load_causal_lm(path, dtype=dtype if device.type == "cuda" else None).to(device).eval()
    with loading(path, "tokenizer", model=False, tokenizer=True):
        tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        from pipeline.lm.tokenizer import CHAT_TEMPLATE, ROLE_TOKENS

        if not all(t in tok.get_vocab() for t in ROLE_TOKENS):
            raise UserError(f"{path}: the tokenizer has no chat template and not our role tokens, so it "
                            "cannot be asked questions; fine-tune it with `make sft sft.init_from=...` first.")
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def release(device) -> None:
    """Free the memory of the models whose last reference the caller has just dropped, before it loads
    the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def vocab_key(tokenizer) -> int:
    return hash(tuple(sorted(tokenizer.get_vocab().items())))


@torch.no_grad()
def answer(model, tokenizer, prompts: list, sampling: Sampling, *, name: str, show_progress: bool = False,
           logprobs: bool = True) -> ModelAnswers:
    """`name`'s answers to `prompts` (chat messages), with their token ids, whether each ended, and (with
    `logprobs`, when sampled at a temperature above 0) their tokens' log-probabilities under this model."""
    ctx = context_length(model)
    keep = max(1, ctx - sampling.max_new_tokens)
    full = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    cut = sum(len(ids) > keep for ids in full)
    if cut:  # the question's start is lost: said and counted, never silent
        print(f"{sampling.section} {name}: {cut} of {len(full)} prompts are over the context ({ctx} positions less "
              f"{sampling.section}.max_new_tokens={sampling.max_new_tokens}); kept their last {keep} tokens")
    prompt_ids = [ids[-keep:] for ids in full]
    device = next(model.parameters()).device
    eos = eos_ids_of(model, tokenizer)
    bar = progress(total=len(prompts), desc=f"{sampling.section} {name}: answering", enabled=show_progress)
    was_training = model.training
    model.eval()
    try:
        answer_ids = generate_batched(
            model, prompt_ids, batch_size=sampling.batch_size, bar=bar,
            max_new_tokens=min(sampling.max_new_tokens, ctx - 1), eos_ids=eos, pad_id=tokenizer.pad_token_id,
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            generator=torch.Generator(device=device).manual_seed(sampling.seed))
    finally:
        bar.close()
        model.train(was_training)
    out = ModelAnswers(name, [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answer_ids],
                       prompt_ids=prompt_ids, answer_ids=answer_ids, ended=[bool(a) and a[-1] in eos for a in answer_ids],
                       vocab_key=vocab_key(tokenizer))
    if logprobs:
        out.logprobs = logprobs_under(model, tokenizer, out, sampling)
    return out


def logprobs_under(model, tokenizer, answers: ModelAnswers, sampling: Sampling) -> list[list[float]] | None:
    """The token log-probabilities of `answers` under `model` at the sampling temperature (the distribution
    the answers were drawn from), for the KL; None for greedy answers, which are not samples."""
    if sampling.temperature <= 0:
        return None
    return answer_logprobs(model, answers.prompt_ids, answers.answer_ids, pad_id=tokenizer.pad_token_id,
                           temperature=sampling.temperature, batch_size=sampling.batch_size)
