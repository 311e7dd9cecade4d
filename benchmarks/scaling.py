"""Scaling on this machine: pretraining and PPO on 1 process and on 2 processes (accelerate launch, gloo on
the CPU, cuda:N on GPUs), the same global batch, side by side in one run.

    python -m benchmarks.scaling                    # part of `make bench`
    python -m benchmarks.scaling --repeats 3 --processes 1,2

The inputs are made once (the test preset's chain up to the reward statistics, under .bench/scaling/chain);
each measured run then starts in a fresh run folder holding copies of its inputs, through the stage's own
command line, so what is timed is what `make pretrain NPROC=2` and `make ppo NPROC=2` do. The numbers are the
stages' own: pretraining's tokens/s over its training steps (manifest), PPO's episodes/s and tokens/s over
its rollouts and updates (metrics.jsonl, startup and the final report left out) and the share of that time
spent generating. 1 process gets every core; each of N processes gets 1/N of them (OMP_NUM_THREADS), so
the comparison is the same cores divided differently. Result: .bench/scaling_result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
PRESET = "configs/test.yaml"
NAME = "test"
# The global batches, fixed so that they do not change with the process count: 16 sequences of 64 tokens per
# pretraining step (8 per micro-batch), 16 episodes per PPO rollout.
PRETRAIN = ["train.tokens_per_step=1024", "train.batch_size=8", "train.max_steps=60", "train.eval_every=60",
            "train.checkpoint_every=60"]
PPO = ["ppo.total_episodes=64", "ppo.batch_size=16", "ppo.save_every=100"]
INPUTS = {"pretrain": ("data",), "ppo": ("data", "cache", "sft", "reward", "reward-stats")}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def command(stage: str, out: Path, processes: int, extra: list[str]) -> list[str]:
    args = ["-m", f"stages.{stage}", "--config", PRESET, f"run.name={NAME}", f"run.out_dir={out}", *extra]
    if processes == 1:
        return [sys.executable, *args]
    from faults.distributed import free_port

    config = "ddp.yaml" if _cuda() else "cpu_ddp.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}",
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *args]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


THREADS: int | None = None  # --threads: the same thread count for every process (default: the cores shared out)


def env(processes: int) -> dict:
    threads = THREADS or max(1, cores() // processes)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], processes: int, what: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(processes), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"benchmarks.scaling: {what} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")


def build_chain(chain: Path, log=print) -> None:
    """The test preset's chain up to the reward statistics, one process each (once; reused after)."""
    if (chain / NAME / "reward-stats" / "manifest.json").is_file():
        return
    log(f"benchmarks.scaling: building the inputs under {chain} (the test preset's chain, a few minutes)")
    for stage in ("data", "pretrain", "sft", "rank", "reward", "reward-stats"):
        module = {"data": "data.demo", "reward-stats": "stages.reward.stats"}.get(stage, f"stages.{stage}")
        run([sys.executable, "-m", module, "--config", PRESET, f"run.name={NAME}", f"run.out_dir={chain}"], 1, stage)


def fresh(chain: Path, work: Path, stage: str) -> Path:
    """A run folder holding copies of the stage's inputs only."""
    shutil.rmtree(work, ignore_errors=True)
    for name in INPUTS[stage]:
        if (chain / NAME / name).exists():
            shutil.copytree(chain / NAME / name, work / NAME / name)
    return work


def measure_pretrain(chain: Path, work: Path, processes: int) -> dict:
    out = fresh(chain, work, "pretrain")
    run(command("pretrain", out, processes, PRETRAIN), processes, f"pretrain on {processes} process(es)")
    metrics = json.loads((out / NAME / "pretrain" / "manifest.json").read_text())["metrics"]
    return {"tokens_per_s": metrics["tokens_per_s"], "tokens_per_step": metrics["tokens_per_step"]}


def measure_ppo(chain: Path, work: Path, processes: int) -> dict:
    out = fresh(chain, work, "ppo")
    run(command("ppo", out, processes, PPO), processes, f"ppo on {processes} process(es)")
    return ppo_numbers(out / NAME / "ppo")


def ppo_numbers(artifact: Path) -> dict:
    """PPO's episodes/s and tokens/s over its rollouts and updates, and the share of that time generating."""
    rows = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/rollout" in r]
    rollout = sum(r["time/rollout"] for r in steps)
    busy = rollout + sum(r["time/update"] for r in steps)
    episodes = steps[-1]["episodes"]
    return {"episodes_per_s": episodes / busy, "episodes": episodes, "generation_share": rollout / busy,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", default="1,2", help="process counts to compare (default 1,2)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per process count, alternating (medians)")
    ap.add_argument("--dir", type=Path, default=BENCH / "scaling", help="work folder (default .bench/scaling)")
    ap.add_argument("--stages", default="pretrain,ppo", help="which to measure (default pretrain,ppo)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every process (default: the cores over the processes; 1 shows what a busy "
                         "machine does to a process whose OpenMP threads wait for each other)")
    args = ap.parse_args(argv)
    global THREADS
    THREADS = args.threads
    stages = args.stages.split(",")
    counts = [int(n) for n in args.processes.split(",")]
    build_chain(args.dir / "chain")
    results: dict[str, dict[int, list[dict]]] = {stage: {n: [] for n in counts} for stage in stages}
    t0 = time.perf_counter()
    for r in range(args.repeats):
        for n in counts if r % 2 == 0 else counts[::-1]:  # alternate, so a change of load hits both sides
            for stage in stages:
                measure = measure_pretrain if stage == "pretrain" else measure_ppo
                results[stage][n].append(measure(args.dir / "chain", args.dir / f"{stage}-{n}", n))
    median = {stage: {n: {k: statistics.median(m[k] for m in runs) for k in runs[0]} for n, runs in by_n.items()}
              for stage, by_n in results.items()}
    device = "cuda" if _cuda() else f"cpu, {cores()} cores"
    threads = f"{args.threads} thread(s) per process" if args.threads else "the cores shared out among the processes"
    print(f"\nscaling on {device}, {threads}, {args.repeats} repeat(s), {time.perf_counter() - t0:.0f}s; the same "
          f"global batch on every side (pretrain 1024 tokens per step, PPO {PPO[1].split('=')[1]} episodes per "
          "rollout)\n")
    header = " | ".join(f"{n} process{'es' if n > 1 else ''}" for n in counts)
    print(f"| measure | {header} | ratio {counts[-1]}/{counts[0]} |")
    print("|---|" + "---|" * (len(counts) + 1))
    rows = [("pretrain tokens/s", "pretrain", "tokens_per_s", "{:,.0f}"),
            ("PPO episodes/s", "ppo", "episodes_per_s", "{:.2f}"),
            ("PPO tokens/s (rollout+update)", "ppo", "tokens_per_s", "{:,.0f}"),
            ("PPO share of time generating", "ppo", "generation_share", "{:.0%}")]
    for label, stage, key, fmt in rows:
        if stage not in median:
            continue
        values = [median[stage][n][key] for n in counts]
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in values) + f" | {values[-1] / values[0]:.2f} |")
    BENCH.mkdir(exist_ok=True)
    (BENCH / "scaling_result.json").write_text(json.dumps({"device": device, "threads": args.threads,
                                                           "repeats": args.repeats,
                                                           "median": median, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
