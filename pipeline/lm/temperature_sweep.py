"""Temperature, shown: one prompt continued at several temperatures, with numbers for what changes.

Sampling draws the next token from softmax(logits / T). Low T piles the probability onto the
likeliest tokens, so the text repeats itself; high T flattens it, so rare words come in and the
text invents. Two measured numbers per temperature, averaged over several samples:

* distinct-word ratio: distinct words / words in a continuation (case-folded, punctuation ignored,
  each <|unk|> of a word vocabulary a word);
* repetition: the share of the continuation's word 3-grams that already occurred earlier in it.

Continuations run their full length (an EOS does not stop them), so every temperature is measured
on the same number of tokens. Sampling goes through the project's one loop, `generation.generate`.
"""

from __future__ import annotations

import re

import torch

from pipeline.lm.generation import generate

TEMPERATURES = (0.2, 0.7, 1.0, 1.5)


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def distinct_word_ratio(text: str) -> float | None:
    words = words_of(text)
    return len(set(words)) / len(words) if words else None


def repetition(text: str, n: int = 3) -> float | None:
    """Share of word n-grams that already occurred earlier in `text` (0: none repeats)."""
    words = words_of(text)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    seen, repeated = set(), 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


def measured_text(tokenizer, ids: list[int]) -> str:
    """The text whose words are measured: special tokens dropped, except that an unknown token
    stays, as the word "unk" (a model looping on <|unk|> repeats itself)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for special in tokenizer.all_special_tokens:
        if special != tokenizer.unk_token:
            text = text.replace(special, " ")
    return text


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def temperature_sweep(model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int, seed: int,
                      temperatures=TEMPERATURES, n_samples: int = 8) -> list[dict]:
    """Per temperature: `n_samples` continuations of `prompt_ids`; their mean distinct-word ratio and
    repetition, and the first continuation as an example."""
    rows = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for temperature in temperatures:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        answers = generate(model, [prompt_ids] * n_samples, max_new_tokens=max_new_tokens, eos_ids=set(),
                           pad_id=pad, temperature=temperature, generator=generator)
        texts = [measured_text(tokenizer, a) for a in answers]
        rows.append({"temperature": temperature, "samples": n_samples, "tokens": max_new_tokens,
                     "distinct_word_ratio": _mean([distinct_word_ratio(t) for t in texts]),
                     "repetition": _mean([repetition(t) for t in texts]),
                     "example": tokenizer.decode(answers[0], skip_special_tokens=False)})
    return rows


def sweep_markdown(prompt: str, sweeps: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: one table of the numbers for every model, then each model's examples."""
    first = next(iter(sweeps.values()), [])
    if not first:
        return []
    lines = [f"The prompt **{prompt.strip()}** continued by {first[0]['tokens']} tokens, {first[0]['samples']} "
             "samples per temperature. Distinct-word ratio: distinct words / words (higher: more varied); "
             "repetition: share of word 3-grams already seen earlier in the same sample (higher: loops). "
             "Low T repeats, high T invents.", "",
             "| model | T | distinct-word ratio | repetition |", "|---|---|---|---|"]
    for name, rows in sweeps.items():
        lines += [f"| {name} | {r['temperature']:g} | {_num(r['distinct_word_ratio'])} | {_num(r['repetition'])} |"
                  for r in rows]
    lines.append("")
    for name, rows in sweeps.items():
        for r in rows:
            example = r["example"].replace("\n", " ").strip()
            lines += [f"**{name}, T = {r['temperature']:g}:** **{prompt.strip()}** {example}", ""]
    return lines


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"
