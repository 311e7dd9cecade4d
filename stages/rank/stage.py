"""`python -m stages.rank`: the policy's own answers, ranked -- the labeling step between SFT and
the reward model (InstructGPT's comparison data).

    python -m stages.rank --config configs/tiny.yaml [rank.labeler=gold|human|judge rank.noise=0.05 ...]
    python -m stages.rank --config configs/tiny.yaml run.round=2 rank.feedback_from_round=2   (from feedback)

Reads the policy (runs/<name>/sft by default) and the labeling prompts (the demo's rank_prompts.jsonl:
the reward training prompts, disjoint from PPO's, evaluation's and the held-out reward prompts);
writes runs/<name>/rank/ (round 1) or runs/<name>/rank-rN/ (run.round=N: round N-1's PPO model's
answers): candidates.jsonl, rankings.jsonl, heldout_candidates.jsonl + heldout_rankings.jsonl (own
answers to the held-out reward prompts, ranked by gold without noise, for the reward stage's report;
never trained on), report.md, report.json, manifest.json. Sampling is saved in chunks: a killed run resumes at the next chunk; labeling is redone.
Under `accelerate launch` (make rank NPROC=2) the processes share out the chunks; the main process writes
them, labels and commits, the same artifact as one process's (the others exit once sampling is done).
A round from feedback (rank.feedback_from_round, stages/rank/feedback.py) samples nothing: its rankings are
people's, from the run's feedback store, of the answers of the model the round starts from.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data.demo import input_path
from data.simulated import agreement, gold_scores, label_with_gold, positions, tiers_by_score
from pipeline.artifacts.store import (
    fingerprint,
    read_manifest,
    resolve_model_source,
    source_fingerprint,
    start_artifact,
)
from pipeline.chain.inputs import from_feedback, labels_dir
from pipeline.chain.table import inputs_of, is_up_to_date
from pipeline.chain.table import key as stage_key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.graph.rounds import current_round, make_command, round_dir
from pipeline.runtime.device import pick_device, seed_everything, share_cpu_threads
from pipeline.runtime.processes import Processes
from stages.rank.candidates import generate_candidates, load_prompt_records, prompt_messages, require_gold
from stages.rank.people import human_rankings
from stages.rank.report import gold_by_position, gold_by_temperature, write_report

# What decides the sampled answers: a change of labeler or noise alone reuses the previous artifact's.
_SAMPLING = ("prompts", "heldout_prompts", "num_prompts", "num_heldout_prompts", "k", "temperatures",
             "max_new_tokens", "batch_size", "chunk_prompts")


def default_policy(cfg, round_no: int) -> tuple[Path, str]:
    """Whose answers round `round_no` ranks when rank.policy is unset, and the command that makes it:
    the SFT model in round 1, the previous round's PPO model after it."""
    if round_no == 1:
        return cfg.stage_dir("sft"), "make sft"
    return round_dir(cfg, "ppo", round_no - 1), make_command("ppo", round_no - 1)


def prompt_sources(cfg) -> tuple[str, str | None]:
    """(the prompts to rank, the held-out prompts or None), as pipeline/chain/table.py declares them."""
    inputs = inputs_of(cfg, "rank")
    held = inputs["heldout"]
    return input_path(cfg, inputs["prompts"]), input_path(cfg, held) if held else None


@main_guard
def main(argv: list[str] | None = None) -> int:
    cfg = stage_config("rank", argv, description="Rank the policy's own answers (gold, human or judge labeler).")
    r = cfg.rank
    round_no = current_round(cfg)
    final = round_dir(cfg, "rank", round_no)
    policy_src, policy_rec = resolve_model_source(r.policy, *default_policy(cfg, round_no))
    if from_feedback(cfg, round_no):
        return rank_from_feedback(cfg, round_no, final, policy_src, policy_rec)
    train_src, held_src = prompt_sources(cfg)
    inputs = {"policy": policy_rec, "prompts": {train_src: source_fingerprint(train_src)},
              "heldout": {held_src: source_fingerprint(held_src)} if held_src else {}}
    judge_rec = None
    if r.labeler == "judge":
        judge_src, judge_rec = resolve_model_source(r.judge, cfg.stage_dir("reward"), "make reward")
        inputs["judge"] = judge_rec
    people_dir = labels_dir(cfg, round_no)
    if r.labeler == "human":
        inputs["labels"] = fingerprint(people_dir) if people_dir.is_dir() else None
    if is_up_to_date(cfg, "rank"):  # a person who stopped partway has work left: the page reopens
        return 0

    prompts = load_prompt_records(train_src, "p", r.num_prompts)
    held_prompts = load_prompt_records(held_src, "h", r.num_heldout_prompts) if held_src else []
    if r.labeler == "gold":
        prompts = require_gold(prompts, train_src, "the simulated labeler (rank.labeler=gold)")
    if held_prompts and any(p.get("gold") is None for p in held_prompts):
        print(f"rank: {held_src} lacks gold answers; no held-out own-answer rankings")
        held_prompts = []

    processes = Processes.of_launch()
    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    seed_everything(cfg.run.seed)
    started = time.time()
    # The people's labels file grows while they rank: it decides the artifact, not the work in progress.
    run_key = stage_key(cfg, "rank")
    writer = start_artifact(final, "rank", resume=r.resume, key={
        "config": run_key["config"], "inputs": {k: v for k, v in run_key["inputs"].items() if k != "labels"}})
    processes.wait_for_main()  # the work dir is ready (locked, resumed or emptied) before anyone lists its chunks
    key = sampling_key(cfg, inputs)
    sampled = previous_samples(final, key) or sample_all(cfg, policy_src, device, prompts, held_prompts,
                                                         writer.checkpoint_dir, key, processes)
    if not processes.main:
        return 0  # labeling (a person may take hours) and writing are the main process's
    sampling_s = time.time() - started
    cands = [c for c in sampled["candidates"] if not c.get("skipped")]
    held = [c for c in sampled["heldout"] if not c.get("skipped")]

    extra: dict = {}
    if r.labeler == "gold":
        rankings, ag = label_gold(cands, r.noise, cfg.run.seed)
    elif r.labeler == "judge":
        rankings, ag, extra = label_judge(cands, judge_src, device)
    else:
        rankings, ag, extra = label_people(cfg, cands, people_dir)
        inputs["labels"] = fingerprint(people_dir) if people_dir.is_dir() else None
    held_rankings, _ = label_gold(held, 0.0, cfg.run.seed)

    out = writer.out_dir
    write_jsonl(out / "candidates.jsonl", cands)
    write_jsonl(out / "rankings.jsonl", [ranking_record(x) for x in rankings])
    write_jsonl(out / "heldout_candidates.jsonl", held)
    write_jsonl(out / "heldout_rankings.jsonl", [ranking_record(x) for x in held_rankings])
    write_jsonl(out / "skipped.jsonl", [{"set": kind, **c} for kind, recs in sampled.items() for c in recs
                                        if c.get("skipped")])
    by_id = {c["prompt_id"]: c for c in cands}
    summary = {
        "run": cfg.run.name, "round": round_no, "policy": policy_src, "labeler": r.labeler, "noise": r.noise,
        "k": r.k, "temperatures": r.temperatures, "prompts": len(prompts),
        "skipped": len(prompts) - len(cands),
        "answers_per_prompt": sum(len(c["responses"]) for c in cands) / len(cands) if cands else None,
        "ranked": len(rankings), "all_tied": ag.pop("all_tied", 0), "agreement": ag,
        "gold_by_position": gold_by_position(rankings, by_id),
        "gold_by_temperature": gold_by_temperature(cands),
        "heldout": {"prompts": len(held_prompts), "skipped": len(held_prompts) - len(held),
                    "ranked": len(held_rankings), "all_tied": len(held) - len(held_rankings)} if held_prompts else None,
        "sampling_s": round(sampling_s, 1), "wall_time_s": round(time.time() - started, 1), **extra,
    }
    write_report(out, summary)
    metrics = {k: summary[k] for k in ("prompts", "skipped", "ranked", "all_tied", "sampling_s", "wall_time_s")}
    metrics.update({f"agreement_{k}": v for k, v in ag.items() if isinstance(v, float)})
    if "remaining" in extra:
        metrics["remaining"] = extra["remaining"]
    writer.key = stage_key(cfg, "rank")  # with the labels people wrote meanwhile: what the artifact holds
    writer.commit(config=to_dict(cfg), inputs=inputs, metrics=metrics, extra={"sampling": key})
    tau = ag.get("kendall_tau")
    print(f"rank: {len(rankings)} of {len(prompts)} prompts ranked by {r.labeler} ({summary['skipped']} with fewer "
          f"than 2 distinct answers, {summary['all_tied']} all tied)"
          + (f"; Kendall tau to the gold order {tau:.3f}" if tau is not None else "")
          + f"; {len(held_rankings)} held-out rankings -> {final}")
    return 0


def rank_from_feedback(cfg, round_no: int, final: Path, policy_src: str, policy_rec: dict) -> int:
    """Round `round_no`'s rankings from the feedback store (stages/rank/feedback.py): nothing is sampled."""
    from stages.rank import feedback

    if is_up_to_date(cfg, "rank") or not Processes.of_launch().main:
        return 0  # under a launch the main process alone reads the store and writes
    started = time.time()
    store = Path(inputs_of(cfg, "rank")["feedback"].path)
    run_key = stage_key(cfg, "rank")  # before reading: feedback appended meanwhile makes the artifact stale
    found = feedback.select(store, policy_rec.get("fingerprint"))
    feedback.require_enough(found, store, policy_src, round_no)
    writer = start_artifact(final, "rank", resume=False, key=run_key)
    out = writer.out_dir
    write_jsonl(out / "candidates.jsonl", feedback.candidates(found, policy_src))
    write_jsonl(out / "rankings.jsonl", [ranking_record(x) for x in found.rankings])
    if found.heldout:
        write_jsonl(out / "heldout_rankings.jsonl", [ranking_record(x) for x in found.heldout])
    c = found.counts
    summary = {"run": cfg.run.name, "round": round_no, "policy": policy_src, "labeler": "feedback",
               "store": str(store / feedback.STORE_FILE), "ranked": len(found.rankings), "all_tied": c["all_tied"],
               "conversations": len({x["prompt_id"] for x in found.rankings}), "feedback": c,
               "people": sorted({x["labeler"] for x in found.rankings}), "agreement": {"people": c["agreement"]},
               "wall_time_s": round(time.time() - started, 1)}
    write_report(out, summary)
    metrics = {k: summary[k] for k in ("ranked", "all_tied", "conversations", "wall_time_s")}
    metrics.update(heldout=c["heldout"], other_models=c["other_models"])
    writer.commit(config=to_dict(cfg), inputs={"policy": policy_rec, **run_key["inputs"]}, metrics=metrics)
    print(f"rank: round {round_no} from feedback: {len(found.rankings)} rankings of {policy_src}'s answers "
          f"({c['other_models']} of other models' answers left out, {c['all_tied']} all tied, {c['heldout']} held "
          f"out) -> {final}")
    return 0


def sampling_key(cfg, inputs: dict) -> dict:
    return {"rank": {k: getattr(cfg.rank, k) for k in _SAMPLING}, "seed": cfg.run.seed,
            "policy": inputs["policy"], "prompts": inputs["prompts"], "heldout": inputs["heldout"]}


def previous_samples(final, key: dict) -> dict | None:
    """The answers of the finished artifact in `final` when they were sampled the same way (only the
    labeling changed): a person reopening the page, or another noise, does not wait for sampling again."""
    manifest = read_manifest(final)
    if not manifest or manifest.get("status") != "complete" or \
            json.loads(json.dumps(key)) != manifest.get("sampling"):
        return None
    skipped = [json.loads(line) for line in (final / "skipped.jsonl").read_text().split("\n") if line]
    out = {}
    for kind, file in (("candidates", "candidates.jsonl"), ("heldout", "heldout_candidates.jsonl")):
        recs = [json.loads(line) for line in (final / file).read_text().split("\n") if line]
        recs += [{k: v for k, v in c.items() if k != "set"} for c in skipped if c["set"] == kind]
        out[kind] = sorted(recs, key=lambda c: c["prompt_id"])
    print(f"rank: reusing the answers sampled for {final} (same policy, prompts and sampling settings)")
    return out


def sample_all(cfg, policy_src: str, device, prompts: list[dict], held_prompts: list[dict], directory,
               key: dict, processes: Processes) -> dict:
    """Every prompt's answers; chunk files carry a hash of the sampling settings, so unfinished work from
    other settings is never resumed."""
    import hashlib

    import torch
    from transformers import AutoTokenizer

    from pipeline.lm.model import load_causal_lm

    r = cfg.rank
    model = load_causal_lm(policy_src, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy_src)
    tag = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    out = {}
    for kind, records in (("candidates", prompts), ("heldout", held_prompts)):
        out[kind] = generate_candidates(
            model, tokenizer, records, kind=f"{kind}-{tag}", directory=directory, k=r.k, temperatures=r.temperatures,
            max_new_tokens=r.max_new_tokens, batch_size=r.batch_size, chunk_prompts=r.chunk_prompts,
            seed=cfg.run.seed + (0 if kind == "candidates" else 1), policy=policy_src, processes=processes)
    return out


def label_gold(cands: list[dict], noise: float, seed: int) -> tuple[list[dict], dict]:
    """The simulated person's rankings, and how far they are from the noiseless gold order."""
    rankings, taus, agree, pairs, all_tied = [], [], 0, 0, 0
    for c in cands:
        tiers, scores = label_with_gold(c, noise, seed)
        if len(tiers) < 2:
            all_tied += 1
            continue
        rankings.append({**c, "groups": tiers, "labeler": "gold", "labeler_kind": "gold"})
        taus.append(agreement(tiers, scores))
        a, n = pair_agreement(tiers, scores)
        agree, pairs = agree + a, pairs + n
    return rankings, {"kendall_tau": _mean(taus), "pair_agreement": agree / pairs if pairs else None,
                      "pairs": pairs, "all_tied": all_tied}


def pair_agreement(tiers: list[list[int]], scores: list[float]) -> tuple[int, int]:
    """(pairs the ranking puts in the gold order, pairs with different gold scores)."""
    place = positions(tiers, len(scores))
    agree = n = 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if scores[i] != scores[j]:
                n += 1
                agree += (scores[i] > scores[j]) == (place[i] < place[j]) and place[i] != place[j]
    return agree, n


def label_judge(cands: list[dict], judge_src: str, device) -> tuple[list[dict], dict, dict]:
    from stages.rank.judge import Judge

    judge = Judge(judge_src, device)
    rankings, taus, agree, pairs, all_tied = [], [], 0, 0, 0
    for c in cands:
        scores = judge.scores(c)
        tiers = tiers_by_score(scores)
        if len(tiers) < 2:
            all_tied += 1
            continue
        rankings.append({**c, "groups": tiers, "labeler": f"judge:{judge_src}", "labeler_kind": "judge",
                         "scores": scores})
        if c.get("gold") is not None:
            gold = gold_scores(c)
            taus.append(agreement(tiers, gold))
            a, n = pair_agreement(tiers, gold)
            agree, pairs = agree + a, pairs + n
    ag = {"kendall_tau": _mean(taus), "pair_agreement": agree / pairs if pairs else None, "pairs": pairs,
          "all_tied": all_tied}
    return rankings, ag, {"judge": judge_src, "judge_kind": judge.kind}


def label_people(cfg, cands: list[dict], directory) -> tuple[list[dict], dict, dict]:
    """Open the labeling page (or the terminal), then read back every person's latest rankings."""
    try:
        from stages.rank import human
    except ImportError:
        raise UserError("rank.labeler=human needs the labeling page, stages/rank/human.py, which this checkout "
                        "lacks; use rank.labeler=gold or judge.") from None

    r = cfg.rank
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{r.labeler_name}.jsonl"
    if r.ui == "browser":
        result = human.label_in_browser(cands, path, labeler=r.labeler_name, host=r.host, port=r.port,
                                        seed=cfg.run.seed)
    else:
        result = human.label_in_terminal(cands, path, labeler=r.labeler_name, seed=cfg.run.seed)
    print(f"rank: {result.get('ranked')} ranked by {r.labeler_name}, {result.get('remaining')} remaining")
    rankings, counts = human_rankings(cands, directory)
    taus = [agreement(x["groups"], gold_scores(x)) for x in rankings if x.get("gold") is not None]
    ag = {"kendall_tau": _mean([t for t in taus if t is not None]), "people": counts["agreement_tau"],
          "all_tied": sum(len(x["groups"]) < 2 for x in rankings)}
    rankings = [x for x in rankings if len(x["groups"]) >= 2]
    return rankings, ag, {"people": counts["people"], "remaining": counts["remaining"],
                          "stale_labels": counts["stale_or_invalid"], "labels_file": str(path)}


def ranking_record(x: dict) -> dict:
    """A rankings.jsonl line (CONTRACTS.md): a flat ranking when strict, groups when some answers tie."""
    tiers = x["groups"]
    rec = {"prompt_id": x["prompt_id"]}
    if x.get("prompt") is not None:
        rec["prompt"] = x["prompt"]
    else:
        rec["prompt"] = prompt_messages(x)
    rec["responses"] = x["responses"]
    rec["ranking"] = [t[0] for t in tiers] if all(len(t) == 1 for t in tiers) else tiers
    rec.update(labeler=x["labeler"], labeler_kind=x["labeler_kind"],
               time=x.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    for key in ("all_bad", "object"):
        if x.get(key):
            rec[key] = x[key]
    return rec


def write_jsonl(path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


if __name__ == "__main__":
    raise SystemExit(main())
