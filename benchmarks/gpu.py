"""GPU readiness: one prepared run of what a GPU user does first, with the numbers that say whether it went well.

    python -m benchmarks.gpu                       # make gpu-check; on a machine without CUDA: says so, exits 0
    python -m benchmarks.gpu --preset configs/small.yaml --out .bench/gpu

On a CUDA machine, in order (every stage through its own command line, in a fresh process):
  1. the chain on a small preset in bf16 (run.dtype=bfloat16), shortened: data, pretrain, sft, rank, reward,
     reward-stats, ppo (full fine-tuning), eval;
  2. SFT with QLoRA (4-bit base, LoRA adapters) from the chain's pretrained model;
  3. PPO with LoRA from the chain's SFT and reward models (its reward statistics measured first);
  4. FSDP on every visible GPU (configs/accelerate/fsdp.yaml): pretrain, SFT and PPO.
Then one table: per run, wall time, tokens/s, MFU (pretraining: 6 x parameters x tokens/s over the measured
bf16 matmul peak of the GPUs used), PPO episodes/s and the share of PPO's time spent generating, and the peak
GPU memory (torch's max_memory_allocated, per process) beside the memory estimator's prediction for PPO
(stages/ppo/memory.py, printed by the stage before it loads anything). Result: <out>/gpu_result.json.
Nothing here has run on a GPU in this repository's CI: the numbers go into the README when it has.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_MARK = "[gpu-check] peak_bytes="
GiB = 1024**3
# The preset's recipe, shortened to minutes: the checks are that each step runs and what it costs, not quality.
SHORT = ["train.max_steps=300", "train.eval_every=100", "train.checkpoint_every=300", "sft.max_steps=200",
         "sft.epochs=1", "rank.num_prompts=256", "reward.max_steps=200", "reward.epochs=1", "ppo.total_episodes=2048",
         "eval.num_prompts=128"]
BF16 = ["run.dtype=bfloat16"]


def child(module: str, args: list[str]) -> None:
    """Run `python -m module args` in this process and print its peak GPU memory at exit (whatever the exit)."""
    import torch

    def peak() -> None:
        if torch.cuda.is_available():
            print(f"{PEAK_MARK}{torch.cuda.max_memory_allocated()}", flush=True)

    atexit.register(peak)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class Check:
    """The runs of one check session: each stage in a fresh process, its output kept, its peak memory read."""

    def __init__(self, preset: str, out: Path, gpus: int, log=print):
        self.preset, self.out, self.gpus, self.log = preset, out, gpus, log
        self.rows: list[dict] = []

    def stage(self, label: str, module: str, name: str, *overrides: str, processes: int = 1,
              accelerate_config: str = "ddp.yaml") -> dict:
        args = ["--config", self.preset, f"run.name={name}", f"run.out_dir={self.out}", *SHORT, *BF16, *overrides]
        launcher = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                     f"configs/accelerate/{accelerate_config}", "--num_processes", str(processes)]
                    if processes > 1 or accelerate_config != "ddp.yaml" else [sys.executable])
        cmd = [*launcher, "-m", "benchmarks.gpu", "--child", module, *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        self.log(f"gpu-check: {label} ...")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        row = {"run": label, "wall_s": round(time.perf_counter() - t0, 1), "ok": proc.returncode == 0,
               "peak_gib": max((int(m) / GiB for m in re.findall(re.escape(PEAK_MARK) + r"(\d+)", proc.stdout)),
                               default=None)}
        estimate = re.search(r"ppo:\s+total\s+([\d.]+) GiB", proc.stdout)
        if estimate:
            row["estimate_gib"] = float(estimate.group(1))
        if not row["ok"]:
            row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            (self.out / f"{name}-{module}.log").write_text(proc.stdout + proc.stderr)
        self.rows.append(row)
        return row

    def artifact(self, name: str, stage: str) -> Path:
        return self.out / name / stage


def pretrain_numbers(artifact: Path, peak_flops: float) -> dict:
    """tokens/s and MFU of a pretraining artifact: 6 x parameters x tokens/s over the peak."""
    from stages.ppo.memory import model_size

    manifest = json.loads((artifact / "manifest.json").read_text())
    tok_s = manifest["metrics"]["tokens_per_s"]
    params = model_size(artifact).params
    return {"tokens_per_s": tok_s, "mfu": 6 * params * tok_s / peak_flops if peak_flops else None}


def run_all(preset: str, out: Path, log=print) -> list[dict]:
    import torch

    from benchmarks.pretrain import matmul_peak
    from benchmarks.scaling import ppo_numbers

    gpus = torch.cuda.device_count()
    peak = matmul_peak(torch.device("cuda"), torch.bfloat16)
    log(f"gpu-check: {gpus} x {torch.cuda.get_device_name(0)}, measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s")
    check = Check(preset, out, gpus, log)
    chain = "chain"
    for stage, module in (("data", "data.demo"), ("pretrain", "stages.pretrain"), ("sft", "stages.sft"),
                          ("rank", "stages.rank"), ("reward", "stages.reward"), ("reward-stats", "stages.reward.stats"),
                          ("ppo", "stages.ppo"), ("eval", "stages.eval")):
        row = check.stage(f"chain bf16: {stage}", module, chain)
        if not row["ok"]:
            return check.rows  # the later steps read the chain's artifacts
    check.rows[1].update(pretrain_numbers(check.artifact(chain, "pretrain"), peak))
    check.rows[6].update(ppo_numbers(check.artifact(chain, "ppo")))
    inputs = [f"sft.init_from={check.artifact(chain, 'pretrain')}", f"ppo.policy={check.artifact(chain, 'sft')}",
              f"ppo.reward_model={check.artifact(chain, 'reward')}"]

    check.stage("sft QLoRA (4-bit base)", "stages.sft", "qlora", *inputs, "sft.lora.enabled=true",
                "sft.lora.qlora=true")
    lora = [*inputs, "ppo.lora.enabled=true"]
    if check.stage("ppo LoRA: reward statistics", "stages.reward.stats", "ppo-lora", *lora)["ok"]:
        row = check.stage("ppo LoRA", "stages.ppo", "ppo-lora", *lora)
        if row["ok"]:
            row.update(ppo_numbers(check.artifact("ppo-lora", "ppo")))

    fsdp = dict(processes=gpus, accelerate_config="fsdp.yaml")
    row = check.stage(f"FSDP x{gpus}: pretrain", "stages.pretrain", "fsdp", **fsdp)
    if row["ok"]:
        row.update(pretrain_numbers(check.artifact("fsdp", "pretrain"), peak * gpus))
    check.stage(f"FSDP x{gpus}: sft", "stages.sft", "fsdp", f"sft.init_from={check.artifact('fsdp', 'pretrain')}",
                **fsdp)
    if check.stage(f"FSDP x{gpus}: reward statistics", "stages.reward.stats", "fsdp", *inputs)["ok"]:
        row = check.stage(f"FSDP x{gpus}: ppo", "stages.ppo", "fsdp", *inputs, **fsdp)
        if row["ok"]:
            row.update(ppo_numbers(check.artifact("fsdp", "ppo")))
    return check.rows


def table(rows: list[dict]) -> str:
    def cell(row, key, fmt):
        value = row.get(key)
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    lines = ["| run | ok | wall s | tokens/s | MFU | PPO episodes/s | PPO generating | peak GiB | estimate GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {'yes' if r['ok'] else 'NO: ' + r.get('error', '')} | {r['wall_s']:.0f} | "
                     f"{cell(r, 'tokens_per_s', '{:,.0f}')} | {cell(r, 'mfu', '{:.1%}')} | "
                     f"{cell(r, 'episodes_per_s', '{:.1f}')} | {cell(r, 'generation_share', '{:.0%}')} | "
                     f"{cell(r, 'peak_gib', '{:.2f}')} | {cell(r, 'estimate_gib', '{:.2f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="configs/small.yaml", help="the preset the chain runs (default small)")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench" / "gpu", help="where the runs go")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: needs a CUDA GPU, and torch sees none here (a CPU build of torch, or no driver); "
              "nothing to check. Run it on a GPU machine: make gpu-check.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run_all(args.preset, args.out)
    when = time.strftime("%Y-%m-%d")
    text = (f"gpu-check {when}: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, preset {args.preset} "
            f"(shortened), {time.perf_counter() - t0:.0f}s\n\n{table(rows)}")
    print("\n" + text)
    (args.out / "gpu_result.json").write_text(json.dumps({"date": when, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
