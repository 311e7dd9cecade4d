"""Generate: a model's answers to the report prompts, the first step of the judge (pipeline/judge/evaluate.py).

Every report samples the same way: each prompt chat-templated with the generation prompt (a prompt over
the context keeps its last tokens, and the count is printed), answered by the project's one sampling loop
(pipeline.lm.generation) in batches of similar length. Each prompt draws from its own `torch.Generator`,
seeded by the report's seed and the prompt's place in the list: an answer does not depend on which other
prompts share its batch, nor on which process of a launch samples it. Under `accelerate launch` the eval
and compare stages pass `processes` (pipeline.runtime.processes): each process answers whole batches (every
world-th one) and the answers are gathered, the same, bit for bit, as one process's.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from pipeline.artifacts.metrics import progress
from pipeline.judge.comparison import ModelAnswers
from pipeline.lm.chat_format import encode_chat
from pipeline.lm.generation import answer_logprobs, context_length, eos_ids_of, generate
from pipeline.runtime.processes import ONE, Processes


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


def prompt_seed(seed: int, index: int) -> int:
    """The seed of the generator that answers prompt `index` of a report sampled under `seed`."""
    return (seed * 1_000_003 + index) % (1 << 63)


def length_batches(prompt_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length, longest first (less padding); the unit a process takes."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def answer(model, tokenizer, prompts: list, sampling: Sampling, *, name: str, show_progress: bool = False,
           logprobs: bool = True, processes: Processes = ONE) -> ModelAnswers:
    """`name`'s answers to `prompts` (chat messages), with their token ids, whether each ended, and (with
    `logprobs`, when sampled at a temperature above 0) their tokens' log-probabilities under this model.
    With several `processes`, each answers its share of the batches and every process gets all answers."""
    ctx = context_length(model)
    keep = max(1, ctx - sampling.max_new_tokens)
    full = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    cut = sum(len(ids) > keep for ids in full)
    if cut and processes.main:  # the question's start is lost: said and counted, never silent
        print(f"{sampling.section} {name}: {cut} of {len(full)} prompts are over the context ({ctx} positions less "
              f"{sampling.section}.max_new_tokens={sampling.max_new_tokens}); kept their last {keep} tokens")
    prompt_ids = [ids[-keep:] for ids in full]
    eos = eos_ids_of(model, tokenizer)
    sampled = sampling.temperature > 0
    mine = processes.mine(length_batches(prompt_ids, sampling.batch_size))
    bar = progress(total=sum(map(len, mine)), desc=f"{sampling.section} {name}: answering",
                   enabled=show_progress and processes.main)
    was_training = model.training
    model.eval()
    done: dict[int, tuple] = {}
    try:
        for batch in mine:
            ids = generate(model, [prompt_ids[i] for i in batch], max_new_tokens=min(sampling.max_new_tokens, ctx - 1),
                           eos_ids=eos, pad_id=tokenizer.pad_token_id, temperature=sampling.temperature,
                           top_k=sampling.top_k, top_p=sampling.top_p,
                           generator=[torch.Generator().manual_seed(prompt_seed(sampling.seed, i)) for i in batch])
            lps = (answer_logprobs(model, [prompt_ids[i] for i in batch], ids, pad_id=tokenizer.pad_token_id,
                                   temperature=sampling.temperature, batch_size=len(batch))
                   if logprobs and sampled else [None] * len(batch))
            done.update({i: (a, lp) for i, a, lp in zip(batch, ids, lps)})
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    done = processes.gather(done)
    answer_ids = [done[i][0] for i in range(len(prompts))]
    out = ModelAnswers(name, [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answer_ids],
                       prompt_ids=prompt_ids, answer_ids=answer_ids, ended=[bool(a) and a[-1] in eos for a in answer_ids],
                       vocab_key=vocab_key(tokenizer))
    if logprobs and sampled:
        out.logprobs = [done[i][1] for i in range(len(prompts))]
    return out


def logprobs_under(model, tokenizer, answers: ModelAnswers, sampling: Sampling,
                   processes: Processes = ONE) -> list[list[float]] | None:
    """The token log-probabilities of `answers` under `model` at the sampling temperature (the distribution
    the answers were drawn from), for the KL; None for greedy answers, which are not samples. Batched as
    `answer` batches them, so one process or several compute the same numbers."""
    if sampling.temperature <= 0:
        return None
    done = {}
    for batch in processes.mine(length_batches(answers.prompt_ids, sampling.batch_size)):
        lps = answer_logprobs(model, [answers.prompt_ids[i] for i in batch], [answers.answer_ids[i] for i in batch],
                              pad_id=tokenizer.pad_token_id, temperature=sampling.temperature, batch_size=len(batch))
        done.update(zip(batch, lps))
    done = processes.gather(done)
    return [done[i] for i in range(len(answers.prompt_ids))]
