"""What the SFT stage measures after training: answers to held-out prompts (greedy and sampled),
their gold-metric score against the reference answers, and samples.md for people to read."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.lm.chat_format import encode_chat
from pipeline.lm.generation import context_length, eos_ids_of, generate_batched


def prompt_ids(tokenizer, messages: list[dict], room: int) -> list[int]:
    """The chat-formatted prompt ending in the assistant tag, keeping its last `room` tokens."""
    ids = encode_chat(tokenizer, messages, add_generation_prompt=True)
    return ids[-room:] if room > 0 else ids


@torch.no_grad()
def answer(model, tokenizer, prompts: list[list[dict]], *, temperature: float, max_new_tokens: int,
           seed: int, batch_size: int = 16) -> list[tuple[str, bool]]:
    """(answer text, whether it ended with EOS) for each prompt."""
    was_training = model.training
    model.eval()
    room = context_length(model) - max_new_tokens
    ids = [prompt_ids(tokenizer, p, room) for p in prompts]
    eos = eos_ids_of(model, tokenizer)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    outs = generate_batched(model, ids, batch_size=batch_size, max_new_tokens=max_new_tokens, eos_ids=eos,
                            pad_id=tokenizer.pad_token_id, temperature=temperature, generator=gen)
    model.train(was_training)
    result = []
    for out in outs:
        ended = bool(out) and out[-1] in eos
        text = tokenizer.decode(out[:-1] if ended else out, skip_special_tokens=True).strip()
        result.append((text, ended))
    return result


def gold_eval(model, tokenizer, heldout: list[tuple[list[dict], str]], *, max_new_tokens: int,
              seed: int) -> dict:
    """Greedy answers to held-out prompts scored against their reference answers
    (data.gold.gold_score), plus how many answers stopped on their own (ended with EOS)."""
    from data.gold import gold_score

    if not heldout:
        return {"gold_score": None, "eos_rate": None, "answers": []}
    answers = answer(model, tokenizer, [p for p, _ in heldout], temperature=0.0,
                     max_new_tokens=max_new_tokens, seed=seed)
    scores = [gold_score(text, gold) for (text, _), (_, gold) in zip(answers, heldout)]
    return {
        "gold_score": sum(scores) / len(scores),
        "eos_rate": sum(ended for _, ended in answers) / len(answers),
        "answers": answers,
        "scores": scores,
    }


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines()) or "> (empty)"


def write_samples(path: str | Path, heldout: list[tuple[list[dict], str]], columns: dict[str, list],
                  header: str = "") -> None:
    """samples.md: per held-out prompt, the reference answer and each column's answer
    (columns: label -> list of (text, ended))."""
    lines = ["# SFT samples on held-out prompts", ""]
    if header:
        lines += [header, ""]
    for i, (msgs, gold) in enumerate(heldout):
        question = msgs[-1]["content"] if msgs else ""
        lines += [f"## {i + 1}. {question.splitlines()[0][:100] if question else '(no prompt)'}", ""]
        for m in msgs:  # earlier turns too: a follow-up question only makes sense with them
            lines += [f"**{m['role']}**", "", _quote(m["content"]), ""]
        lines += ["**reference**", "", _quote(gold), ""]
        for label, answers in columns.items():
            text, ended = answers[i]
            lines += [f"**{label}**" + ("" if ended else " (no EOS: cut at max_new_tokens)"), "", _quote(text), ""]
    Path(path).write_text("\n".join(lines))
