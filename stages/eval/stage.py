"""Evaluation: compare the run's models (pretrain, SFT, PPO) or any HF model dirs on held-out data.

    python -m stages.eval --config configs/tiny.yaml
    python -m stages.eval --config configs/tiny.yaml eval.models=[runs/tiny/sft,runs/tiny/ppo] eval.prompts=my.jsonl

Writes runs/<name>/eval/: report.md (read top to bottom), report.json (every number),
answers.jsonl (every generated answer with its scores) and the PNG plots the report embeds.
The last model listed is the candidate; every other model is a baseline it is compared with.
Whatever cannot be measured (no reward model, no gold answers, no held-out text, no training
curves) is skipped and the report says so.

Under `accelerate launch` (make eval NPROC=2) every process answers its share of the prompts' batches and
the answers are gathered (pipeline/judge/answering.py): the report is the one a single process writes.
The main process alone measures the language-model metrics, scores, plots and writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.held_out_judge import held_out_judge
from data.report_prompts import report_prompts
from pipeline.artifacts.finite import json_safe
from pipeline.artifacts.store import is_complete, read_manifest, resolve_model_source, start_artifact
from pipeline.chain.inputs import EVAL_RUN_MODELS
from pipeline.chain.table import is_up_to_date
from pipeline.chain.table import key as stage_key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.graph.rounds import newest_artifact
from pipeline.judge.answering import Sampling, answer, load_chat_model, logprobs_under, release
from pipeline.judge.comparison import compare_answers
from pipeline.judge.evaluate import RewardJudge, reward_model_path, score_gold, score_rm
from pipeline.judge.stats import spearman
from pipeline.lm.generation import context_length
from pipeline.lm.loading import require_score_head
from pipeline.lm.model import model_dtype
from pipeline.lm.temperature_sweep import temperature_sweep
from pipeline.runtime.device import pick_device, seed_everything, share_cpu_threads
from pipeline.runtime.processes import Processes
from stages.eval.baseline import bigram_baseline, prompt_ids, sweep_prompt
from stages.eval.compare import Evaluated, headline, samples, summarise_model, write_answers
from stages.eval.lm import heldout_texts, lm_metrics
from stages.eval.plots import plot_all
from stages.eval.report import render_report

RUN_MODELS = EVAL_RUN_MODELS  # this run's models eval compares by default (pipeline/chain/table.py)


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


def sampling(cfg) -> Sampling:
    e = cfg.eval
    return Sampling(temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=e.seed,
                    batch_size=e.batch_size, top_k=e.top_k, top_p=e.top_p, section="eval")


def run_model(ev: Evaluated, prompts: list, texts: list[str] | None, cfg, device, dtype,
              candidate: Evaluated | None, processes: Processes) -> None:
    """Everything that needs this model loaded: LM metrics (the main process's), its answers (the judge's),
    and the candidate's answers under it for the KL (the candidate itself, `candidate` None: its own
    log-probabilities); answers and log-probabilities shared among the `processes`."""
    e = cfg.eval
    model, tok = load_chat_model(ev.path, device, dtype)
    if texts and processes.main:
        ev.lm = lm_metrics(model, tok, texts, max_tokens=e.lm_max_tokens, batch_size=max(1, e.batch_size // 4))
        ev.sweep = temperature_sweep(model, tok, prompt_ids(tok, sweep_prompt(texts)), seed=e.seed,
                                     max_new_tokens=min(e.max_new_tokens, context_length(model) - 16))
    ev.answers = answer(model, tok, prompts, sampling(cfg), name=ev.name, show_progress=True,
                        logprobs=candidate is None, processes=processes)
    if candidate is not None and ev.answers.vocab_key == candidate.answers.vocab_key:
        ev.logprobs_of_candidate = logprobs_under(model, tok, candidate.answers, sampling(cfg), processes)
    del model
    release(device)


def judge(cfg, evaluated: list[Evaluated], prompts: list, golds: list, reward_model: tuple[str | None, str], device,
          skipped: list[str]) -> list[dict]:
    """RM and gold scores of every answer, then the candidate (the last model) against each other model;
    what cannot be judged goes into `skipped`."""
    e = cfg.eval
    answered = [ev.answers for ev in evaluated]
    rm_path, why = reward_model
    if rm_path:
        reward = RewardJudge.load(rm_path, device, batch_size=e.batch_size)  # raw scores: any model's answers
        score_rm(reward, answered, prompts)
        del reward
        release(device)
    else:
        skipped.append(f"reward-model scores and RM win rates: {why}")
    why = (score_gold(answered, golds, held_out_judge(cfg, device, batch_size=e.batch_size), prompts) if prompts
           else "gold metric: eval.prompts=none")
    if why:
        skipped.append(f"{why}; gold win rates skipped")
    candidate = evaluated[-1]
    comparisons = [compare_answers(candidate.answers, base.answers, prompts, kl_budget=cfg.ppo.kl_budget,
                                   under_baseline=base.logprobs_of_candidate, length_tolerance=e.length_tolerance)
                   for base in evaluated[:-1]] if prompts else []
    if not comparisons:
        skipped.append("win rates and KL: " + ("only one model (name two or more with eval.models=[a,b])"
                                               if prompts else "no prompts (eval.prompts=none)"))
    return comparisons


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
    from pipeline.artifacts.metrics import read_metrics

    curves = {}
    for stage in ("pretrain", "sft", "reward", "ppo"):
        rows = read_metrics(newest_artifact(cfg, stage) / "metrics.jsonl")
        if rows:
            curves[stage] = rows
    return curves


def evaluate(cfg) -> Path | None:
    """The finished artifact (None on the processes of a launch other than the main one, which only answer)."""
    e = cfg.eval
    processes = Processes.of_launch()
    # the lock and the key as every stage, before minutes of answering; nothing to resume: a fresh work directory
    writer = start_artifact(cfg.stage_dir("eval"), "eval", resume=False, key=stage_key(cfg, "eval"))
    seed_everything(e.seed)
    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    dtype = model_dtype(cfg.run.dtype, device)
    refs = model_refs(cfg)
    skipped: list[str] = []
    chosen = report_prompts(cfg, "eval")
    prompts, golds = chosen.prompts, chosen.golds
    rm_path, why = reward_model_path(cfg) if prompts else (None, "eval.prompts=none")
    if rm_path:
        require_score_head(rm_path)  # before minutes of answering, not after
    texts, text_source = heldout_texts(cfg) if processes.main else (None, "")
    if texts is None:
        skipped.append(f"language modelling: {text_source}")

    evaluated = [Evaluated(name, path, record) for name, path, record in refs]
    candidate = evaluated[-1]
    for ev in [candidate] + evaluated[:-1]:  # the candidate first: the others score its answers
        if processes.main:
            print(f"eval: {ev.name} ({ev.path})")
        run_model(ev, prompts, texts, cfg, device, dtype, None if ev is candidate else candidate, processes)
    if not processes.main:
        return None  # the main process judges and writes

    baseline, bigram_sweep = bigram_baseline([ev.path for ev in evaluated], texts, e) if texts else (None, None)
    if texts and baseline is None:
        skipped.append("bigram baseline: no evaluated model is a pretraining artifact with bigram.safetensors")
    sweeps = {**({"bigram": bigram_sweep} if bigram_sweep else {}), **{ev.name: ev.sweep for ev in evaluated
                                                                        if ev.sweep}}

    answered = [ev.answers for ev in evaluated]
    comparisons = judge(cfg, evaluated, prompts, golds, (rm_path, why), device, skipped)
    # The bar compares the candidate with the model just before it (by default PPO with SFT).
    bar = comparisons[-1].get("quality_bar") if comparisons else None

    rm_gold = None
    if rm_path and answered[0].gold_scores is not None:
        rm_all = [s for a in answered for s in a.rm_scores]
        gold_all = [s for a in answered for s in a.gold_scores]
        rm_gold = spearman(rm_all, gold_all)
    curves = training_curves(cfg)
    if not curves:
        skipped.append(f"training curves: no metrics.jsonl under {cfg.run_dir}")
    rm_info = reward_section(cfg, rm_path)
    if rm_info is None:
        skipped.append("reward model section: no reward model")

    out = writer.out_dir
    report = {
        "run": cfg.run.name, "seed": e.seed, "candidate": candidate.name,
        "baselines": [ev.name for ev in evaluated[:-1]],
        "sampling": {"temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p,
                     "max_new_tokens": e.max_new_tokens},
        "prompts": {"source": chosen.source, "count": len(prompts)},
        "lm_data": {"source": text_source, "documents": len(texts or [])},
        "lm_baseline": baseline,
        "temperature": {"prompt": sweep_prompt(texts), "sweeps": sweeps} if sweeps else None,
        "models": {ev.name: summarise_model(ev) for ev in evaluated},
        "comparisons": comparisons,
        "quality_bar": bar,
        "rm_gold_spearman": rm_gold,
        "reward_model": rm_info,
        "samples": samples(evaluated, prompts, golds, e.num_side_by_side),
        "skipped": skipped,
    }
    per_answer = {a.name: {"rm": a.rm_scores, "gold": a.gold_scores, "words": [len(t.split()) for t in a.answers]}
                  for a in answered}
    report["plots"] = plot_all(report, curves, per_answer, out)
    report["curves"] = {stage: sorted({k for r in rows for k in r if k not in ("step", "time")})
                        for stage, rows in curves.items()}
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    (out / "report.md").write_text(render_report(report))
    write_answers(out / "answers.jsonl", prompts, golds, answered)
    final = writer.commit(config=to_dict(cfg), inputs={ev.name: ev.record for ev in evaluated},
                          metrics=headline(report))
    return final


@main_guard
def main(argv=None) -> None:
    cfg = stage_config("eval", argv, description=__doc__.split("\n")[0])
    if is_up_to_date(cfg, "eval"):
        return
    final = evaluate(cfg)
    if final is None:
        return
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
