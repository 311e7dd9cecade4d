"""`python -m stages.compare`: SFT against each aligned model of the run, in one report.

    make compare        # runs/<name>/compare/: compare.md, compare.json, frontier.png, manifest.json

Every finished artifact among ppo, dpo, grpo and rloo, and best of n (compare.best_of_n: SFT's n answers,
the reward model's choice), is compared with sft on the eval stage's held-out prompts: RM and gold win rates with 95% intervals, the paired gold difference, KL to SFT,
answer length, wall time and the data each used, and the quality-bar verdict in PPO's words.
(Its own directory, not runs/<name>/eval/: `make eval` replaces that directory whole.)

`make compare NPROC=2` shares the sampling among 2 processes (stages/compare/evaluator.py); the report is the
one a single process writes.
"""

from __future__ import annotations

import json

from pipeline.artifacts.finite import json_safe
from pipeline.artifacts.store import is_complete, read_manifest, resolve_model_source, start_artifact
from pipeline.chain.table import is_up_to_date
from pipeline.chain.table import key as stage_key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.graph.rounds import newest_artifact
from pipeline.lm.model import model_dtype
from pipeline.runtime.device import pick_device, seed_everything, share_cpu_threads
from pipeline.runtime.processes import Processes
from stages.compare import evaluator
from stages.compare.best_of_n import best_of_n_row, sample_pool
from stages.compare.report import plot_frontier, render

METHODS = ("ppo", "dpo", "grpo", "rloo")


def model_refs(cfg) -> list[tuple[str, str, dict]]:
    """(name, path, record): sft first, then every finished method."""
    refs = [("sft", *resolve_model_source(None, cfg.stage_dir("sft"), "make sft"))]
    dirs = {m: newest_artifact(cfg, m) for m in METHODS}
    for m, d in dirs.items():  # PPO: the newest finished round's
        if is_complete(d):
            refs.append((m, str(d), {"path": str(d), "fingerprint": read_manifest(d).get("fingerprint")}))
    if len(refs) == 1:
        raise UserError(f"nothing to compare with SFT: none of {', '.join(str(d) for d in dirs.values())} "
                        "is a finished artifact. Run `make ppo`, `make dpo`, `make grpo` or `make rloo` first.")
    return refs


def cost(path: str, method: str) -> dict:
    """Wall time of training and the data it used, from the artifact's manifest."""
    manifest = read_manifest(path) or {}
    m = manifest.get("metrics") or {}
    if method == "ppo":
        episodes = (manifest.get("config") or {}).get("ppo", {}).get("total_episodes")
        # PPO records the whole stage's time (its final report included), over every process of a resumed run
        return {"wall_time_s": manifest.get("wall_time_s"), "used": f"{episodes} sampled answers"}
    used = (f"{m.get('pairs_seen')} pair updates ({m.get('pairs')} pairs)" if method == "dpo"
            else f"{m.get('answers_sampled')} sampled answers")
    return {"wall_time_s": m.get("train_wall_time_s"), "used": used}


@main_guard
def main(argv: list[str] | None = None) -> int:
    cfg = stage_config("compare", argv, description=__doc__.splitlines()[0])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars: noise next to ours
    final = cfg.stage_dir("compare")
    refs = model_refs(cfg)
    rm_path, _ = evaluator.reward_model_path(cfg)
    inputs = {name: record for name, _, record in refs}
    inputs["reward_model"] = (read_manifest(rm_path) or {}).get("fingerprint") if rm_path else None
    if is_up_to_date(cfg, "compare"):
        return 0
    processes = Processes.of_launch()
    writer = start_artifact(final, "compare", resume=False, key=stage_key(cfg, "compare"))  # the lock, first
    seed_everything(cfg.eval.seed)
    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    dtype = model_dtype(cfg.run.dtype, device)
    evaluated = [evaluator.Evaluated(name, path, record) for name, path, record in refs]
    sft, methods = evaluated[0], evaluated[1:]
    # the sampling, shared out among the processes of a launch; then the main process alone judges and writes
    evaluator.answer_each(cfg, evaluated, device, dtype, processes)
    under = evaluator.logprobs_under_baseline(cfg, sft, methods, device, processes)
    pool = sample_pool(cfg, sft.path, device, dtype, processes) if cfg.compare.best_of_n and rm_path else None
    if not processes.main:
        return 0
    prompts, source, skipped = evaluator.judge_all(cfg, evaluated, device)
    rows = evaluator.versus_baseline(cfg, sft, methods, prompts, device, under)
    for row, ev in zip(rows, methods):
        row.setdefault("gold_difference", None)  # the evaluator's, clustered by prompt; None without gold
        row["cost"] = cost(ev.path, ev.name)
    if cfg.compare.best_of_n:  # beside the methods, on the same prompts: no training, the reward model's choice
        row, why = best_of_n_row(cfg, sft.path, sft.answers, rm_path, device, dtype, pool)
        rows += [row] if row else []
        skipped += [why] if why else []
    e = cfg.eval
    report = {"run": cfg.run.name, "seed": e.seed, "prompts": {"source": source, "count": len(prompts)},
              "sampling": {"temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p,
                           "max_new_tokens": e.max_new_tokens},
              "sft": evaluator.summarise_model(sft), "methods": rows, "skipped": skipped, "gold_judge": cfg.judge.gold,
              "plot": plot_frontier(rows, writer.out_dir)}
    (writer.out_dir / "compare.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    (writer.out_dir / "compare.md").write_text(render(report))
    headline = {}
    for r in rows:
        for key in ("win_rate_rm", "win_rate_gold"):
            if r.get(key):
                headline[f"{r['candidate']}/{key}"] = r[key]["win_rate"]
        if r.get("kl"):
            headline[f"{r['candidate']}/kl"] = r["kl"]["k1_mean"]
    writer.commit(config=to_dict(cfg), inputs=inputs, metrics=json_safe(headline))
    print(f"\ncompare: wrote {final / 'compare.md'}")
    for r in rows:
        verdict = (r.get("quality_bar") or {}).get("verdict", "not judged (no reward model)")
        print(f"  {r['candidate']} vs sft: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
