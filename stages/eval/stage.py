"""Evaluation: compare the run's models (pretrain, SFT, PPO) or any HF model dirs on held-out data.

    python -m stages.eval --config configs/tiny.yaml
    python -m stages.eval --config configs/tiny.yaml eval.models=[runs/tiny/sft,runs/tiny/ppo] eval.prompts=my.jsonl

Writes runs/<name>/eval/: report.md (read top to bottom), report.json (every number),
answers.jsonl (every generated answer with its scores) and the PNG plots the report embeds.
The last model listed is the candidate; every other model is a baseline it is compared with.
Whatever cannot be measured (no reward model, no gold answers, no held-out text, no training
curves) is skipped and the report says so.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from pipeline.artifacts.store import ArtifactWriter, is_complete, read_manifest, resolve_model_source
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.artifacts.finite import json_safe
from pipeline.lm.generation import answer_logprobs, context_length, eos_ids_of, generate_batched
from pipeline.lm.loading import loading, require_score_head
from pipeline.runtime.metrics import progress
from pipeline.lm.model import load_causal_lm, model_dtype
from pipeline.graph.rounds import last_finished_round, make_command, newest_artifact
from pipeline.runtime.device import pick_device, seed_everything
from pipeline.judge.stats import spearman
from pipeline.lm.temperature_sweep import temperature_sweep
from stages.eval.baseline import bigram_baseline, prompt_ids, sweep_prompt
from stages.eval.compare import Evaluated, compare, headline, samples, summarise_model
from stages.eval.lm import heldout_texts, lm_metrics
from stages.eval.plots import plot_all
from stages.eval.report import render_report

RUN_MODELS = ("pretrain", "sft", "ppo")


def model_refs(cfg) -> list[tuple[str, str, dict]]:
    """(name, path, manifest record) of each model to evaluate, in order; the last is the candidate."""
    refs = []
    if cfg.eval.models:
        for value in cfg.eval.models:
            if value in RUN_MODELS and not Path(value).exists():  # `eval.models=[sft,ppo]`: this run's artifacts
                source, record = resolve_model_source(None, newest_artifact(cfg, value), f"make {value}")
                refs.append((value, source, record))
                continue
            source, record = resolve_model_source(value, Path(value), "make <stage>")
            refs.append((_short_name(value), source, record))
    else:
        for stage in RUN_MODELS:
            d = newest_artifact(cfg, stage)
            if is_complete(d):
                refs.append((stage, str(d), {"path": str(d), "fingerprint": read_manifest(d).get("fingerprint")}))
    if not refs:
        raise UserError(
            f"no model to evaluate: none of {', '.join(str(newest_artifact(cfg, s)) for s in RUN_MODELS)} is a finished "
            "artifact. Run `make pretrain` (then sft, reward, ppo) first, or name models with "
            "eval.models=[dir1,dir2] (make eval MODELS=\"dir1 dir2\")."
        )
    names = [r[0] for r in refs]
    return [(n if names.count(n) == 1 else f"{n}#{i + 1}", p, r) for i, (n, p, r) in enumerate(refs)]


def _short_name(value: str) -> str:
    parts = [p for p in Path(value).parts if p not in ("", ".", "/")]
    return parts[-1] if parts else value


def eval_prompts(cfg) -> tuple[list[dict], str]:
    """The held-out prompts ({"prompt": messages, "gold": str|None}) and where they came from."""
    from data.loaders import load_prompts

    if cfg.eval.prompts and cfg.eval.prompts.lower() == "none":
        return [], "eval.prompts=none"
    if cfg.eval.prompts:
        source = cfg.eval.prompts
    else:
        from data.demo import demo_file

        source = str(demo_file(cfg, "eval_prompts"))
    records = load_prompts(source)
    if not records:
        raise UserError(f"{source} has no prompts to evaluate on.")
    return records[: cfg.eval.num_prompts], source


def _load(path: str, device, dtype):
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


def _vocab_key(tok) -> int:
    return hash(tuple(sorted(tok.get_vocab().items())))


def run_model(ev: Evaluated, prompts: list[dict], texts: list[str] | None, cfg, device, dtype,
              candidate: Evaluated | None) -> None:
    """Everything that needs this model loaded: LM metrics, answers, log-probs for the KL."""
    e = cfg.eval
    model, tok = _load(ev.path, device, dtype)
    ev.vocab_key = _vocab_key(tok)
    if texts:
        ev.lm = lm_metrics(model, tok, texts, max_tokens=e.lm_max_tokens, batch_size=max(1, e.batch_size // 4))
        ev.sweep = temperature_sweep(model, tok, prompt_ids(tok, sweep_prompt(texts)), seed=e.seed,
                                     max_new_tokens=min(e.max_new_tokens, context_length(model) - 16))
    ctx = context_length(model)
    keep = max(1, ctx - e.max_new_tokens)
    full = [list(tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False))
            for p in prompts]
    cut = sum(len(ids) > keep for ids in full)
    if cut:  # the question's start is lost: said and counted, never silent
        print(f"eval {ev.name}: {cut} of {len(full)} prompts are over the context ({ctx} positions less "
              f"eval.max_new_tokens={e.max_new_tokens}); kept their last {keep} tokens")
    ev.prompt_ids = [ids[-keep:] for ids in full]
    generator = torch.Generator(device=device).manual_seed(e.seed)
    eos = eos_ids_of(model, tok)
    bar = progress(total=len(prompts), desc=f"eval {ev.name}: answering")
    ev.answer_ids = generate_batched(
        model, ev.prompt_ids, batch_size=e.batch_size, bar=bar, max_new_tokens=min(e.max_new_tokens, ctx - 1),
        eos_ids=eos, pad_id=tok.pad_token_id, temperature=e.temperature, top_k=e.top_k, top_p=e.top_p,
        generator=generator)
    bar.close()
    ev.ended = [bool(a) and a[-1] in eos for a in ev.answer_ids]
    ev.answers = [tok.decode(a, skip_special_tokens=True).strip() for a in ev.answer_ids]
    kl_temperature = e.temperature
    if e.temperature <= 0:
        pass  # greedy answers: no KL estimate
    elif candidate is None:  # this is the candidate: its answers under itself
        ev.own_logprobs = answer_logprobs(model, ev.prompt_ids, ev.answer_ids, pad_id=tok.pad_token_id,
                                          temperature=kl_temperature, batch_size=e.batch_size)
    elif ev.vocab_key == candidate.vocab_key:
        ev.logprobs_of_candidate = answer_logprobs(model, candidate.prompt_ids, candidate.answer_ids,
                                                   pad_id=tok.pad_token_id, temperature=kl_temperature,
                                                   batch_size=e.batch_size)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reward_model_path(cfg) -> tuple[str | None, str]:
    """The reward model to score answers with, or None and why not."""
    value = cfg.eval.reward_model
    if value and value.lower() == "none":
        return None, "eval.reward_model=none"
    if value:
        source, _ = resolve_model_source(value, Path(value), "make reward")
        return source, ""
    default = newest_artifact(cfg, "reward")  # the one the evaluated PPO model was trained against
    if is_complete(default):
        return str(default), ""
    command = make_command("reward", last_finished_round(cfg))
    return None, f"no reward model: {default} does not exist (run `{command}`, or set eval.reward_model=DIR)"


def score_with_rm(path: str, evaluated: list[Evaluated], prompts: list[dict], batch_size: int, device) -> None:
    from pipeline.judge.scoring import load_reward_model, score_conversations

    model, tok, stats = load_reward_model(path, device=device)
    msgs = [p["prompt"] for p in prompts]
    for ev in evaluated:
        ev.rm_scores = score_conversations(model, tok, msgs, ev.answers, batch_size=batch_size,
                                           max_length=stats.get("max_length")).tolist()
    del model
    gc.collect()


def score_with_gold(evaluated: list[Evaluated], prompts: list[dict]) -> str:
    """Gold-metric scores of every answer; '' on success, else why it was skipped."""
    golds = [p.get("gold") for p in prompts]
    if not all(golds):
        missing = sum(1 for g in golds if not g)
        return f"gold metric: {missing} of {len(golds)} prompts have no gold answer"
    from data.gold import gold_score

    for ev in evaluated:
        ev.gold_scores = [float(gold_score(a, g)) for a, g in zip(ev.answers, golds)]
    return ""


def reward_section(cfg, rm_path: str | None) -> dict | None:
    """The reward stage's own held-out numbers (accuracy, rank correlation), from its artifact."""
    if rm_path is None:
        return None
    manifest = read_manifest(rm_path) or {}
    numbers = {k: v for k, v in (manifest.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    report = Path(rm_path) / "report.json"
    if report.is_file():
        try:
            data = json.loads(report.read_text())
            for k, v in (data.items() if isinstance(data, dict) else []):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    numbers.setdefault(k, v)
        except json.JSONDecodeError:
            pass
    return {"path": rm_path, "metrics": numbers}


def training_curves(cfg) -> dict[str, list[dict]]:
    from pipeline.runtime.metrics import read_metrics

    curves = {}
    for stage in ("pretrain", "sft", "reward", "ppo"):
        rows = read_metrics(newest_artifact(cfg, stage) / "metrics.jsonl")
        if rows:
            curves[stage] = rows
    return curves


def evaluate(cfg) -> Path:
    e = cfg.eval
    seed_everything(e.seed)
    device = pick_device(cfg.run.device)
    dtype = model_dtype(cfg.run.dtype, device)
    refs = model_refs(cfg)
    skipped: list[str] = []
    prompts, prompt_source = eval_prompts(cfg)
    rm_path, why = reward_model_path(cfg) if prompts else (None, "eval.prompts=none")
    if rm_path:
        require_score_head(rm_path)  # before minutes of answering, not after
    texts, text_source = heldout_texts(cfg)
    if texts is None:
        skipped.append(f"language modelling: {text_source}")

    evaluated = [Evaluated(name, path, record) for name, path, record in refs]
    candidate = evaluated[-1]
    for ev in [candidate] + evaluated[:-1]:  # the candidate first: the others score its answers
        print(f"eval: {ev.name} ({ev.path})")
        run_model(ev, prompts, texts, cfg, device, dtype, None if ev is candidate else candidate)

    baseline, bigram_sweep = bigram_baseline([ev.path for ev in evaluated], texts, e) if texts else (None, None)
    if texts and baseline is None:
        skipped.append("bigram baseline: no evaluated model is a pretraining artifact with bigram.safetensors")
    sweeps = {**({"bigram": bigram_sweep} if bigram_sweep else {}), **{ev.name: ev.sweep for ev in evaluated
                                                                        if ev.sweep}}

    if rm_path:
        score_with_rm(rm_path, evaluated, prompts, e.batch_size, device)
    else:
        skipped.append(f"reward-model scores and RM win rates: {why}")
    why = score_with_gold(evaluated, prompts) if prompts else "gold metric: eval.prompts=none"
    if why:
        skipped.append(f"{why}; gold win rates skipped")
    comparisons = [compare(candidate, base, prompts, tolerance=e.length_tolerance, kl_budget=cfg.ppo.kl_budget)
                   for base in evaluated[:-1]] if prompts else []
    if not comparisons:
        skipped.append("win rates and KL: " + ("only one model (name two or more with eval.models=[a,b])"
                                               if prompts else "no prompts (eval.prompts=none)"))
    # The bar compares the candidate with the model just before it (by default PPO with SFT).
    bar = comparisons[-1].get("quality_bar") if comparisons else None

    rm_gold = None
    if rm_path and evaluated[0].gold_scores is not None:
        rm_all = [s for ev in evaluated for s in ev.rm_scores]
        gold_all = [s for ev in evaluated for s in ev.gold_scores]
        rm_gold = spearman(rm_all, gold_all)
    curves = training_curves(cfg)
    if not curves:
        skipped.append(f"training curves: no metrics.jsonl under {cfg.run_dir}")
    rm_info = reward_section(cfg, rm_path)
    if rm_info is None:
        skipped.append("reward model section: no reward model")

    ArtifactWriter(cfg.stage_dir("eval"), "eval").discard()  # nothing to resume: start from a clean directory
    writer = ArtifactWriter(cfg.stage_dir("eval"), "eval")
    out = writer.out_dir
    report = {
        "run": cfg.run.name, "seed": e.seed, "candidate": candidate.name,
        "baselines": [ev.name for ev in evaluated[:-1]],
        "sampling": {"temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p,
                     "max_new_tokens": e.max_new_tokens},
        "prompts": {"source": prompt_source, "count": len(prompts)},
        "lm_data": {"source": text_source, "documents": len(texts or [])},
        "lm_baseline": baseline,
        "temperature": {"prompt": sweep_prompt(texts), "sweeps": sweeps} if sweeps else None,
        "models": {ev.name: summarise_model(ev) for ev in evaluated},
        "comparisons": comparisons,
        "quality_bar": bar,
        "rm_gold_spearman": rm_gold,
        "reward_model": rm_info,
        "samples": samples(evaluated, prompts, e.num_side_by_side),
        "skipped": skipped,
    }
    per_answer = {ev.name: {"rm": ev.rm_scores, "gold": ev.gold_scores,
                            "words": [len(a.split()) for a in ev.answers]} for ev in evaluated}
    report["plots"] = plot_all(report, curves, per_answer, out)
    report["curves"] = {stage: sorted({k for r in rows for k in r if k not in ("step", "time")})
                        for stage, rows in curves.items()}
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    (out / "report.md").write_text(render_report(report))
    with open(out / "answers.jsonl", "w") as f:
        for i, p in enumerate(prompts):
            row = {"prompt": p["prompt"], "gold": p.get("gold")}
            for ev in evaluated:
                row[ev.name] = {"answer": ev.answers[i], "ended": ev.ended[i],
                                "rm": ev.rm_scores[i] if ev.rm_scores else None,
                                "gold": ev.gold_scores[i] if ev.gold_scores else None}
            f.write(json.dumps(row) + "\n")
    final = writer.commit(config=to_dict(cfg), inputs={ev.name: ev.record for ev in evaluated},
                          metrics=headline(report))
    return final


@main_guard
def main(argv=None) -> None:
    cfg = stage_config("eval", argv, description=__doc__.split("\n")[0])
    final = evaluate(cfg)
    report = json.loads((final / "report.json").read_text())
    print(f"\neval: wrote {final / 'report.md'}")
    for key, value in headline(report).items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    if report.get("quality_bar"):
        q = report["quality_bar"]
        print(f"  {q['candidate']} vs {q['baseline']}: {q['verdict']}")
    for s in report["skipped"]:
        print(f"  skipped: {s}")


if __name__ == "__main__":
    main()
