"""The embedded demo data: every stage's default data set, built offline from Python's own docs.

    python -m data.demo --config configs/tiny.yaml [data.subset=all data.k=4 data.seed=0]

Writes into cfg.data_dir (atomically, with manifest.json):
  pretrain_train.jsonl, pretrain_val.jsonl      {"text", "object"}
  sft_train.jsonl, sft_val.jsonl                {"messages", "object"}
  rankings_train.jsonl, rankings_heldout.jsonl  {"prompt", "responses", "ranking", "object"}
  pairs_train.jsonl, pairs_heldout.jsonl        {"prompt", "chosen", "rejected", "rank_gap", "object"}
  ppo_prompts.jsonl                             {"prompt", "object"}  PPO's training prompts
  ppo_dev.jsonl                                 {"prompt", "gold", "object"}  PPO's development split
  eval_prompts.jsonl                            {"prompt", "gold", "object"}  the test set
  rank_prompts.jsonl, rank_heldout_prompts.jsonl {"prompt", "gold", "object"}: the rankings' prompts, for
                                                the rank stage to ask the model itself (same objects)

Knowledge comes from pretraining: every object asked about anywhere has its document in
pretrain_train; pretrain_val holds other documents only. The question sets are disjoint by object,
so evaluation asks about objects the model read in pretraining but never saw as a question. Held out
means held out: PPO reports (and presets are tuned) on ppo_dev, objects no stage trains on;
eval_prompts is the test set, looked at only for the final report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from data.demo_questions import candidates, is_askable, sft_conversations, shorten, summary, what_prompt
from data.pydocs import Doc, harvest
from pipeline.artifacts.store import ArtifactWriter, is_complete, read_manifest, require_artifact
from pipeline.chain.table import STAGES
from pipeline.config.cli import stage_config
from pipeline.errors import UserError, main_guard
from pipeline.graph.declare import Artifact, default_dir
from pipeline.graph.rounds import current_round, make_command

# The builder's own source: when the construction changes, existing demo directories are rebuilt.
_BUILDER_SOURCES = ("demo.py", "demo_questions.py", "pydocs.py")
FILES = (
    "pretrain_train.jsonl", "pretrain_val.jsonl", "sft_train.jsonl", "sft_val.jsonl",
    "rankings_train.jsonl", "rankings_heldout.jsonl", "pairs_train.jsonl", "pairs_heldout.jsonl",
    "ppo_prompts.jsonl", "ppo_dev.jsonl", "eval_prompts.jsonl",
    "rank_prompts.jsonl", "rank_heldout_prompts.jsonl",
)
# Shares of the askable objects per question set (each object goes to exactly one).
# ppo_dev (PPO's development split) took its share from sft_train (0.45 before).
SPLITS = (("sft_train", 0.39), ("sft_val", 0.05), ("rank_train", 0.20), ("rank_heldout", 0.06),
          ("ppo", 0.12), ("ppo_dev", 0.06), ("eval", 0.12))
PROMPTS_PER_OBJECT = 2  # differently phrased PPO and evaluation prompts per object
RANKINGS_PER_OBJECT = 4  # differently phrased ranking prompts per object, each with fresh wrong answers


def _split_objects(names: list[str], rng: random.Random) -> dict[str, list[str]]:
    names = list(names)
    rng.shuffle(names)
    out, start = {}, 0
    for i, (split, share) in enumerate(SPLITS):
        end = len(names) if i == len(SPLITS) - 1 else start + max(1, round(share * len(names)))
        out[split] = sorted(names[start:end])
        start = end
    return out


def _distinct_prompts(doc: Doc, n: int, rng: random.Random) -> list[str]:
    prompts: list[str] = []
    for _ in range(20 * n):
        p = what_prompt(doc, rng)
        if p not in prompts:
            prompts.append(p)
        if len(prompts) == n:
            break
    return prompts


def build_sets(subset: str, k: int, seed: int, answer_words: int = 40, val_docs: float = 0.05) -> tuple[dict, dict]:
    """All demo sets as {file name: records}, and the statistics for the manifest."""
    rng = random.Random(seed)
    docs = harvest(subset)
    if not docs:
        raise UserError("No documentation found in this Python installation (docstrings stripped with -OO?).")
    by_name = {d.name: d for d in docs}
    answers, shortened = {}, 0
    for d in docs:
        answers[d.name], cut = shorten(summary(d), answer_words)
        shortened += cut and is_askable(d, answers[d.name])
    # An answer shared by two objects would make the question ambiguous: ask about neither.
    answer_count = Counter(answers[d.name] for d in docs)
    askable = [d.name for d in docs if is_askable(d, answers[d.name]) and answer_count[answers[d.name]] == 1]

    # Validation documents: object docs only (the long language-reference topics stay in training).
    candidates_val = sorted(d.name for d in docs if d.kind != "topic")
    n_val = min(len(candidates_val) // 2, max(4, round(val_docs * len(docs))))
    val_names = set(rng.sample(candidates_val, n_val))
    split = _split_objects([n for n in askable if n not in val_names], rng)

    sets: dict[str, list[dict]] = {name: [] for name in FILES}
    for d in docs:
        target = "pretrain_val.jsonl" if d.name in val_names else "pretrain_train.jsonl"
        sets[target].append({"text": d.text, "object": d.name})
    for part in ("sft_train", "sft_val"):
        sets[f"{part}.jsonl"] = _sft_set(split[part], by_name, answers, rng)
    sft_objects = split["sft_train"] + split["sft_val"]
    for part, out in (("rank_train", "train"), ("rank_heldout", "heldout")):
        # Wrong answers come from objects this split or SFT may show, never from the other
        # ranking split, PPO or evaluation: held-out objects stay unseen by the reward model.
        rankings = _ranking_set(split[part], sft_objects + split[part], by_name, answers, k, rng)
        sets[f"rankings_{out}.jsonl"] = rankings
        sets[f"pairs_{out}.jsonl"] = [pair for r in rankings for pair in expand_ranking(r)]
        # The same prompts for the rank stage, which ranks the model's own answers to them.
        prompts_file = "rank_prompts.jsonl" if out == "train" else "rank_heldout_prompts.jsonl"
        sets[prompts_file] = [{"prompt": r["prompt"], "gold": answers[r["object"]], "object": r["object"]}
                              for r in rankings]
    ppo = _prompt_set(split["ppo"], by_name, answers, rng)
    sets["ppo_prompts.jsonl"] = [{"prompt": r["prompt"], "object": r["object"]} for r in ppo]  # no gold: PPO trains on these
    sets["ppo_dev.jsonl"] = _prompt_set(split["ppo_dev"], by_name, answers, rng)
    sets["eval_prompts.jsonl"] = _prompt_set(split["eval"], by_name, answers, rng)

    stats = {
        "documents": len(docs),
        "askable_objects": len(askable),
        "objects_per_split": {k_: len(v) for k_, v in split.items()},
        "answers_shortened": int(shortened),
        "counts": {name: len(recs) for name, recs in sets.items()},
        "chars": {name: sum(len(r["text"]) for r in sets[name]) for name in ("pretrain_train.jsonl",
                                                                              "pretrain_val.jsonl")},
        "kinds": dict(sorted(Counter(d.kind for d in docs).items())),
    }
    return sets, stats


def _sft_set(names: list[str], by_name: dict, answers: dict, rng: random.Random) -> list[dict]:
    records = [{"messages": msgs, "object": name}
               for name in names for msgs in sft_conversations(by_name[name], answers[name], rng)]
    rng.shuffle(records)
    return records


def _ranking_set(names: list[str], pool: list[str], by_name: dict, answers: dict, k: int,
                 rng: random.Random) -> list[dict]:
    """K graded answers per prompt, shown in shuffled order; `ranking` lists them best first."""
    by_parent = defaultdict(list)
    for n in pool:
        by_parent[by_name[n].parent].append(answers[n])
    records = []
    for name in names:
        d = by_name[name]
        siblings = [a for a in by_parent[d.parent] if a != answers[name]]
        others = [answers[n] for n in pool if by_name[n].parent != d.parent]
        for prompt in _distinct_prompts(d, RANKINGS_PER_OBJECT, rng):
            best_first = candidates(d, answers[name], k, siblings, others, rng)
            order = list(range(k))
            rng.shuffle(order)  # order[i] = quality rank of the i-th shown response
            responses = [best_first[q] for q in order]
            ranking = sorted(range(k), key=lambda i: order[i])
            records.append({"prompt": prompt, "responses": responses, "ranking": ranking, "object": name})
    rng.shuffle(records)
    return records


def _prompt_set(names: list[str], by_name: dict, answers: dict, rng: random.Random) -> list[dict]:
    records = [{"prompt": prompt, "gold": answers[name], "object": name}
               for name in names for prompt in _distinct_prompts(by_name[name], PROMPTS_PER_OBJECT, rng)]
    return _interleave(records)


def expand_ranking(r: dict) -> list[dict]:
    """All K(K-1)/2 pairs of a ranking, better answer first; rank_gap = distance in the ranking."""
    order = r["ranking"]
    return [{"prompt": r["prompt"], "chosen": r["responses"][order[a]], "rejected": r["responses"][order[b]],
             "rank_gap": b - a, "object": r["object"]}
            for a in range(len(order)) for b in range(a + 1, len(order))]


def _interleave(records: list[dict]) -> list[dict]:
    """First every object's first prompt, then every object's second one."""
    seen: Counter = Counter()
    ranked = []
    for i, r in enumerate(records):
        ranked.append((seen[r["object"]], i, r))
        seen[r["object"]] += 1
    return [r for _, _, r in sorted(ranked, key=lambda t: (t[0], t[1]))]


def demo_config(cfg) -> dict:
    """What decides the content; a demo directory built with another value is rebuilt."""
    return {"subset": cfg.data.subset, "k": cfg.data.k, "seed": cfg.data.seed,
            "answer_words": cfg.data.answer_words, "val_docs": cfg.data.val_docs,
            "builder": _builder_hash(), "python": platform.python_version()}


def _builder_hash() -> str:
    h = hashlib.sha256()
    for name in _BUILDER_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def refuse_foreign_target(target: Path) -> None:
    """The build replaces data.dir: only ever a folder it built before (or nothing), never a user's file."""
    if target.is_file() or target.is_symlink():
        raise UserError(f"data.dir={target} is an existing file; the demo data needs a folder (a new one, or "
                        "one it built before).")
    manifest = read_manifest(target) if target.is_dir() else None
    if target.is_dir() and any(target.iterdir()) and (manifest or {}).get("stage") != "data":
        raise UserError(f"data.dir={target} is a folder the demo builder did not make (no demo manifest.json); "
                        "building there would replace its contents. Pick a new folder.")


def build(cfg, quiet: bool = False) -> Path:
    """Build every demo set into cfg.data_dir; returns the directory."""
    started = time.time()
    d = cfg.data
    refuse_foreign_target(cfg.data_dir)
    sets, stats = build_sets(d.subset, d.k, d.seed, d.answer_words, d.val_docs)
    writer = ArtifactWriter(cfg.data_dir, "data")
    for name, records in sets.items():
        with open(writer.out_dir / name, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    stats["build_seconds"] = round(time.time() - started, 2)
    out = writer.commit(config=demo_config(cfg), metrics=stats,
                        extra={"source": f"Python {platform.python_version()} docs (pydoc_data.topics + docstrings)"})
    if not quiet:
        print(f"demo data ({d.subset}, k={d.k}, seed={d.seed}) -> {out} in {stats['build_seconds']}s "
              f"from {stats['documents']} documents ({stats['chars']['pretrain_train.jsonl']:,} chars of pretraining "
              f"text); {stats['answers_shortened']} answers shortened", file=sys.stderr)
        for name, n in stats["counts"].items():
            print(f"  {name:24s} {n:6d}", file=sys.stderr)
    return out


def is_current(cfg) -> bool:
    m = read_manifest(cfg.data_dir)
    return is_complete(cfg.data_dir) and m.get("config") == demo_config(cfg) and all(
        (cfg.data_dir / f).is_file() for f in FILES)


def demo_file(cfg, name: str) -> Path:
    """The path of one demo set ("sft_train.jsonl" or just "sft_train"), building the demo data
    first if it is missing or was built with another config or Python."""
    if name not in FILES and f"{name}.jsonl" in FILES:
        name = f"{name}.jsonl"
    if name not in FILES:
        raise UserError(f"{name!r} is not a demo set; the demo has: {', '.join(FILES)}.")
    if not is_current(cfg):
        with _build_lock(cfg.data_dir):
            if not is_current(cfg):  # another process (a DDP rank) may have built it meanwhile
                build(cfg)
    return cfg.data_dir / name


@contextlib.contextmanager
def _build_lock(data_dir: Path):
    """One builder at a time when several processes (DDP ranks) start on a fresh machine."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir.with_name(data_dir.name + ".lock")
    with open(lock_path, "w") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; single-process use is unaffected
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pretrain_sources(cfg) -> list[tuple[str, str]]:
    """The pretraining text as (source, role) pairs: the demo corpus comes with its own validation file;
    other sources are split (train.val_fraction). Pretraining trains on them; evaluation scores the held-out part."""
    sources: list[tuple[str, str]] = []
    for source in cfg.train.data:
        if source == "demo":
            sources += [(str(demo_file(cfg, "pretrain_train.jsonl")), "train"),
                        (str(demo_file(cfg, "pretrain_val.jsonl")), "val")]
        else:
            sources.append((source, "split"))
    if not sources:
        raise UserError("train.data is empty: list the text files, folders, globs or hub datasets to pretrain on.")
    return sources


def demo_source(cfg, value: str | None, name: str) -> str:
    """A stage's data setting: "demo" (or empty) means the demo set `name`; anything else is kept."""
    return str(demo_file(cfg, name)) if value in (None, "", "demo") else value


def input_path(cfg, inp, file: str = "rankings.jsonl") -> str:
    """The path a stage reads for one of its declared inputs: a data source (the demo built first when it is
    missing), or a file of this run's artifact (which must be finished; the error names its command)."""
    if isinstance(inp, Artifact):
        d = default_dir(cfg, inp, STAGES)
        require_artifact(d, make_command(inp.stage, inp.round_no if isinstance(inp.round_no, int)
                                         else current_round(cfg)))
        return str(d / file)
    if inp.demo:
        return str(demo_file(cfg, Path(inp.path).name))
    return inp.path


@main_guard
def main(argv: list[str] | None = None) -> None:
    cfg = stage_config("data", argv, description="Build the embedded demo data from Python's own docs.")
    if is_current(cfg):
        print(f"data: {cfg.data_dir} is up to date (same subset, k, seed and Python); `make clean` to rebuild")
        return
    build(cfg)


if __name__ == "__main__":
    main()
