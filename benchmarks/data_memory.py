"""Peak memory and time to the first step of SFT, reward and PPO data loading on big JSONL files.

    python -m benchmarks.data_memory [--mb 200] [--dir /tmp/data_memory] [--only sft,huge] [--old REV]

Writes (once, under --dir, never in the repository) a JSONL of ~820k short conversations (--mb MB),
one of preference pairs and one of 40 short conversations around a single 20 MB record; then runs
each stage's real data path in a fresh child process and prints the child's peak resident memory
(ru_maxrss) and its times:
- sft: the stage's load_sft_splits, screen_splits, build_trainer on the tiny preset's model shape and
  trainer.train up to the end of the first optimizer step (the time printed as "first step"), then
  again in the same run folder ("rerun": the cached records and screening are mapped, not rebuilt);
- reward: load_training_pairs, split_by_group, tokenize_pairs and the trainer's Dataset (then a rerun, as sft);
- prompts: PPO's load_prompt_sets (ppo.data = the conversations: each one's prompt and gold answer);
- huge: sft on the file with the 20 MB record.
With --old REV (default: the commit before streaming data) each case also runs on that revision's code
(a `git archive` of it under --dir), side by side, in the same invocation. The cores may be shared:
times are indicative, memory is not affected by other processes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_STREAMING = "995ee70"  # the last commit whose SFT read and tokenized every record into Python lists
CASES = ("sft", "reward", "prompts", "huge")
HUGE_MB = 20


# --- the data -------------------------------------------------------------------------------------

def _words() -> list[str]:
    from pydoc_data.topics import topics

    return [w for t in sorted(topics) for w in topics[t].split() if w.isalpha()]


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choices(words, k=n)).capitalize() + "."


def write_conversations(path: Path, mb: int, seed: int = 0) -> int:
    """Short one- or two-exchange conversations of real words (~250 bytes each) up to `mb` MB."""
    rng, words, n, written = random.Random(seed), _words(), 0, 0
    with open(path, "w") as f:
        while written < mb << 20:
            msgs = []
            for _ in range(1 if rng.random() < 0.8 else 2):
                msgs += [{"role": "user", "content": _sentence(rng, words, rng.randint(4, 14))},
                         {"role": "assistant", "content": _sentence(rng, words, rng.randint(6, 22))}]
            line = json.dumps({"messages": msgs}) + "\n"
            f.write(line)
            written += len(line)
            n += 1
    return n


def write_pairs(path: Path, mb: int, seed: int = 1) -> int:
    rng, words, n, written = random.Random(seed), _words(), 0, 0
    with open(path, "w") as f:
        while written < mb << 20:
            line = json.dumps({"prompt": _sentence(rng, words, rng.randint(4, 14)),
                               "chosen": _sentence(rng, words, rng.randint(6, 22)),
                               "rejected": _sentence(rng, words, rng.randint(6, 22))}) + "\n"
            f.write(line)
            written += len(line)
            n += 1
    return n


def write_huge(path: Path, seed: int = 2) -> None:
    """40 short conversations with one conversation of HUGE_MB MB (its answer) in the middle."""
    rng, words = random.Random(seed), _words()
    short = [{"messages": [{"role": "user", "content": _sentence(rng, words, 8)},
                           {"role": "assistant", "content": _sentence(rng, words, 12)}]} for _ in range(40)]
    block = " ".join(words[:20_000]) + " "
    answer = block * ((HUGE_MB << 20) // len(block) + 1)
    with open(path, "w") as f:
        for i, rec in enumerate(short):
            if i == 20:
                f.write(json.dumps({"messages": [{"role": "user", "content": "Tell me everything."},
                                                 {"role": "assistant", "content": answer}]}) + "\n")
            f.write(json.dumps(rec) + "\n")


def prepare(root: Path, mb: int) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {"chats": root / f"chats_{mb}mb.jsonl", "pairs": root / f"pairs_{mb}mb.jsonl",
             "huge": root / f"huge_record_{HUGE_MB}mb.jsonl"}
    for name, path in files.items():
        if not path.is_file():
            t0 = time.time()
            n = {"chats": lambda p: write_conversations(p, mb), "pairs": lambda p: write_pairs(p, mb),
                 "huge": lambda p: write_huge(p) or 41}[name](path)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB, {n:,} records) in {time.time() - t0:.0f} s")
    model = root / "model"
    if not (model / "config.json").is_file():
        _tiny_model(model, files["chats"])
    return {**files, "model": model}


def _tiny_model(out: Path, chats: Path) -> None:
    """The tiny preset's model shape and tokenizer size, trained on the first conversations."""
    import itertools

    from pipeline.config.loader import load_config
    from pipeline.lm.model import build_model
    from pipeline.lm.tokenizer import train_tokenizer

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    with open(chats) as f:
        texts = [m["content"] for line in itertools.islice(f, 20_000) for m in json.loads(line)["messages"]]
    tok = train_tokenizer(texts, vocab_size=cfg.tokenizer.vocab_size)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    build_model(cfg.model, tok).save_pretrained(out)
    tok.save_pretrained(out)


# --- one case, in a child process -----------------------------------------------------------------

def _config(root: Path, overrides: list[str]):
    from pipeline.config.loader import load_config

    # the preset of the code under test (the child runs in its tree): keys come and go between revisions
    return load_config(Path("configs", "tiny.yaml").resolve(), [f"run.out_dir={root / 'runs'}", *overrides])


def child_sft(data: Path, model_dir: Path, root: Path) -> dict:
    from types import SimpleNamespace

    from transformers import TrainerCallback

    from stages.sft.dataset import load_sft_splits, screen_splits
    from stages.sft.stage import build_trainer, load_model

    t0 = time.time()
    cfg = _config(root, [f"sft.data={data}", "sft.batch_size=8", "run.device=cpu"])
    train_raw, val_raw, _ = load_sft_splits(cfg)
    loaded = time.time()
    model, tokenizer, _, new_ids = load_model(str(model_dir), cfg)
    train, val = screen_splits(train_raw, val_raw, tokenizer, cfg.sft.max_length)
    screened = time.time()
    first = {}

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            first.setdefault("t", time.time())
            control.should_training_stop = True

    writer = SimpleNamespace(checkpoint_dir=root / "checkpoints")
    trainer = build_trainer(cfg, model, tokenizer, train, val, writer, FirstStep(), new_ids)
    trainer.train()
    return {"records": len(train.records) + len(val.records), "read_s": loaded - t0, "screen_s": screened - loaded,
            "first_step_s": first["t"] - t0, "dropped": train.total + val.total - len(train.records) - len(val.records)}


def child_reward(data: Path, model_dir: Path, root: Path) -> dict:
    from datasets import Dataset

    from pipeline.lm.tokenizer import load_tokenizer
    from stages.reward.dataset import load_training_pairs, split_by_group, tokenize_pairs

    t0 = time.time()
    tokenizer, _ = load_tokenizer(str(model_dir))
    streaming = "cache" in inspect.signature(load_training_pairs).parameters  # the code before keeps lists
    pairs = load_training_pairs([str(data)], cache=root / "cache") if streaming else load_training_pairs([str(data)])
    pairs, _ = split_by_group(pairs, 0.05, 0)
    encoded = tokenize_pairs(pairs, tokenizer, 256, use_margin=False, source=str(data))
    ds = encoded.dataset(False) if streaming else Dataset.from_dict(encoded.columns(False))
    return {"records": len(ds), "ready_s": time.time() - t0}


def child_prompts(data: Path, model_dir: Path, root: Path) -> dict:
    from stages.ppo.stage import load_prompt_sets

    t0 = time.time()
    train, dev, _, _ = load_prompt_sets(_config(root, [f"ppo.data={data}"]))
    return {"records": len(train) + len(dev), "ready_s": time.time() - t0}


def run_child(case: str, data: Path, model_dir: Path, root: Path) -> None:
    out = {"sft": child_sft, "huge": child_sft, "reward": child_reward, "prompts": child_prompts}[case](
        data, model_dir, root)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the screening's worker processes, if any
    out["workers_peak_rss_mb"] = children.ru_maxrss / 1024
    me = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime  # what load cannot inflate
    print("RESULT " + json.dumps(out))


# --- the parent: old and new side by side ---------------------------------------------------------

def old_tree(root: Path, rev: str) -> Path:
    """The code of `rev` (tracked files only), unpacked once under root."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = root / f"tree-{sha}"
    if not (tree / "pipeline").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def measure(case: str, data: Path, model_dir: Path, root: Path, tree: Path, timeout: int,
            work: Path | None = None) -> dict | str:
    """One child's result; `work` (its run folder) given again: a rerun that finds the first run's caches."""
    work = work or root / f"work-{case}-{tree.name}-{time.time_ns()}"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(work / "hf")}
    # this file runs as a script; the code it measures is imported from `tree` (PYTHONPATH comes first)
    cmd = [sys.executable, __file__, "--child", case, str(data), str(model_dir), str(work)]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"over {timeout} s"
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return f"failed (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"


def describe(result: dict | str) -> str:
    if isinstance(result, str):
        return result
    t = result.get("first_step_s", result.get("ready_s"))
    what = "first step" if "first_step_s" in result else "data ready"
    extra = f", {result['dropped']} dropped" if result.get("dropped") else ""
    workers = result.get("workers_peak_rss_mb", 0)
    workers = f" (child processes: {workers:,.0f} MiB at most)" if workers > 1 else ""
    cpu = f", {result['cpu_s']:.0f} CPU-s" if "cpu_s" in result else ""
    return (f"peak RSS {result['peak_rss_mb']:,.0f} MiB{workers}, {what} after {t:.0f} s{cpu} "
            f"({result['records']:,} records{extra})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--dir", default="/tmp/data_memory")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    ap.add_argument("--old", default=BEFORE_STREAMING, help="a revision to compare with ('' for none)")
    ap.add_argument("--which", default="new,old", help="the code to measure: new (this checkout), old (--old)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per child")
    ap.add_argument("--child", nargs=4, metavar=("CASE", "DATA", "MODEL", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, *paths = args.child
        return run_child(case, *map(Path, paths))
    root = Path(args.dir)
    files = prepare(root, args.mb)
    which = args.which.split(",")
    trees = [("new", ROOT)] if "new" in which else []
    trees += [(f"old ({args.old})", old_tree(root, args.old))] if args.old and "old" in which else []
    data = {"sft": files["chats"], "prompts": files["chats"], "reward": files["pairs"], "huge": files["huge"]}
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores (possibly shared); peak RSS of a fresh process per case")
    for case in args.only.split(","):
        for name, tree in trees:
            work = root / f"work-{case}-{tree.name}-{time.time_ns()}"
            result = measure(case, data[case], files["model"], root, tree, args.timeout, work)
            print(f"{case:8s} {name:14s} {data[case].name}: {describe(result)}", flush=True)
            if case in ("sft", "reward") and tree == ROOT and isinstance(result, dict):  # a rerun maps the caches
                result = measure(case, data[case], files["model"], root, tree, args.timeout, work)
                print(f"{case:8s} {'new, rerun':14s} {data[case].name}: {describe(result)}", flush=True)


if __name__ == "__main__":
    main()
