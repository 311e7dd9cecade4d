"""samples.md of a pretraining run: the GPT and its bigram baseline sampled side by side at each of
train.sample_temperatures, then one held-out prefix continued at T = 0.2, 0.7, 1.0, 1.5 with the
distinct-word ratio and repetition of each. Every sample comes from `pipeline.lm.generation`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.lm.generation import eos_ids_of, generate
from pipeline.lm.temperature_sweep import sweep_markdown, temperature_sweep


def sample_prompts(tokenizer, val_tokens) -> list[list[int]]:
    """A document start (EOS alone) and EOS + the first 8 tokens of a held-out document."""
    eos = tokenizer.eos_token_id
    ends = np.flatnonzero(np.asarray(val_tokens[:50_000]) == eos)
    prefix_at = int(ends[0]) + 1 if len(ends) and ends[0] + 9 < len(val_tokens) else 0
    return [[eos], [eos, *map(int, val_tokens[prefix_at:prefix_at + 8])]]


def write_samples(models: dict, tokenizer, val_tokens, cfg, path: Path) -> dict:
    """Write samples.md for `models` ({name: model}, the GPT first); returns the temperature sweeps."""
    prompts = sample_prompts(tokenizer, val_tokens)
    lines = [f"# Samples from {cfg.run.name}/pretrain\n", f"{cfg.train.sample_tokens} new tokens per sample; "
             "a sample starts at a document start or continues a held-out prefix (in **bold**). "
             f"Models: {', '.join(models)} (the count-based baseline), same seeds.\n"]
    for model in models.values():
        model.eval()
    for temperature in cfg.train.sample_temperatures:
        lines.append(f"\n## temperature {temperature}\n")
        for prompt in prompts:
            head = tokenizer.decode(prompt[1:], skip_special_tokens=False).strip()  # after the EOS; <|unk|> shown
            for name, model in models.items():
                generator = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.run.seed)
                out = generate(model, [prompt], max_new_tokens=cfg.train.sample_tokens,
                               eos_ids=eos_ids_of(model, tokenizer), pad_id=tokenizer.pad_token_id,
                               temperature=temperature, generator=generator)[0]
                tail = tokenizer.decode(out, skip_special_tokens=False)
                lines.append(f"\n*{name}:* {'**' + head + '** ' if head else ''}{tail}\n")
            lines.append("\n---\n")
    sweeps = {name: temperature_sweep(model, tokenizer, prompts[1], max_new_tokens=cfg.train.sample_tokens,
                                      seed=cfg.run.seed) for name, model in models.items()}
    lines += ["\n## Temperature: low T repeats, high T invents\n\n"]
    lines += [line + "\n" for line in sweep_markdown(tokenizer.decode(prompts[1][1:], skip_special_tokens=False),
                                                      sweeps)]
    path.write_text("".join(lines))
    return sweeps
