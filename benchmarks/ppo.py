"""PPO throughput benchmark: our trainer (stages.ppo) against TRL 1.12's last PPOTrainer, side by
side, in the same run, on the same tiny models, prompts, batch, answer length and PPO epochs.

    python -m benchmarks.ppo                      # part of `make bench`
    python -m benchmarks.ppo --repeats 1 --threads 2 --total-episodes 1024
    python -m benchmarks.ppo --use-run runs/tiny  # the real SFT policy and reward model instead
    python -m benchmarks.ppo --also-run runs/tiny # both settings, one after the other

TRL 1.13+ has no PPOTrainer, so TRL 1.12 runs in a throwaway venv (.bench/trl112-venv), built on
first use with the CPU torch and the transformers/accelerate/datasets versions of our own venv.
Each side runs in a fresh process with the same thread count, sides alternating across
repeats; the table shows medians. Result: .bench/ppo_result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

import torch

from benchmarks.ppo_setup import BenchSetup
from pipeline.errors import UserError, main_guard

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
PEER_VENV = BENCH / "trl112-venv"
PEER_PY = PEER_VENV / "bin" / "python"
PEER_CHECK = "from trl.experimental.ppo import PPOTrainer, PPOConfig"


def ensure_peer_venv(log=print) -> Path:
    """Create the TRL 1.12 venv once (about a minute and 1.5 GB: CPU torch, never the CUDA one)."""
    if PEER_PY.exists() and _peer_ok():
        return PEER_PY
    log(f"benchmarks.ppo: creating the throwaway TRL 1.12 venv at {PEER_VENV.relative_to(ROOT)} (one time, "
        "about a minute; delete the directory to rebuild it)")
    torch_spec = os.environ.get("PPO_BENCH_TORCH_SPEC", f"torch=={version('torch').split('+')[0]}")
    torch_index = os.environ.get("PPO_BENCH_TORCH_INDEX")
    same = [f"{pkg}=={version(pkg)}" for pkg in ("transformers", "accelerate", "datasets")]
    steps = [
        [sys.executable, "-m", "venv", str(PEER_VENV)],
        [str(PEER_PY), "-m", "pip", "install", "-q", torch_spec, *(["--index-url", torch_index] if torch_index else [])],
        [str(PEER_PY), "-m", "pip", "install", "-q", "trl==1.12.*", *same],
    ]
    BENCH.mkdir(exist_ok=True)
    with open(BENCH / "trl112-venv.log", "w") as logf:
        for cmd in steps:
            if subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode:
                raise UserError(f"building the TRL 1.12 venv failed at `{' '.join(cmd)}`; see "
                                f"{BENCH / 'trl112-venv.log'}. Fix the cause (network? disk?), delete {PEER_VENV} "
                                "and run the benchmark again.")
    if not _peer_ok():
        raise UserError(f"the venv at {PEER_VENV} cannot `{PEER_CHECK}`; delete it and run the benchmark again.")
    return PEER_PY


def _peer_ok() -> bool:
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    return subprocess.run([str(PEER_PY), "-c", PEER_CHECK], env=env, capture_output=True).returncode == 0


def run_side(side: str, models: Path, threads: int, out: Path, seed: int | None = None, log=print) -> dict:
    """One training run of one side, in a fresh process pinned to `threads` threads."""
    cmd = ([str(PEER_PY), str(ROOT / "benchmarks" / "trl_ppo_peer.py")] if side == "trl"
           else [sys.executable, "-m", "benchmarks.ppo_ours"])
    cmd += ["--models", str(models), "--out", str(out), "--threads", str(threads)]
    cmd += ["--seed", str(seed)] if seed is not None else []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"the {side} side of the PPO benchmark failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result.update(load_before=load, load_after=os.getloadavg()[0], wall_s=time.perf_counter() - t)
    log(f"  {side:4s}: {result['episodes_per_s']:.2f} episodes/s ({result['episodes']} episodes in "
        f"{result['train_s']:.0f}s, load {load:.1f}->{result['load_after']:.1f})")
    return result


def summarise(runs: list[dict]) -> dict:
    """Medians over repeats of one side."""
    med = lambda xs: statistics.median(xs)  # noqa: E731

    def per_episode(key):
        return med([sum(s[key] for s in r["steps"]) / r["episodes"] for r in runs])

    rollout, update, gen = per_episode("rollout_s"), per_episode("update_s"), per_episode("generation_s")
    return {
        "episodes_per_s": med([r["episodes_per_s"] for r in runs]),
        "all_episodes_per_s": [round(r["episodes_per_s"], 3) for r in runs],
        "rollout_ms_per_episode": 1000 * rollout, "update_ms_per_episode": 1000 * update,
        "generation_ms_per_episode": 1000 * gen, "generation_share": gen / (rollout + update),
        "peak_rss_mib": med([r["peak_rss_mib"] for r in runs]),
        "score_first_step": med([r["steps"][0]["score"] for r in runs]),
        "score_last_step": med([r["steps"][-1]["score"] for r in runs]),
        "kl_last_step": med([r["steps"][-1]["kl"] for r in runs]),
        "heldout_score_after": med([r["heldout_after"]["score_mean"] for r in runs]),
        "heldout_score_se": med([r["heldout_after"]["score_std"] / r["heldout_after"]["n"] ** 0.5 for r in runs]),
        "heldout_score_mean_over_seeds": statistics.fmean(r["heldout_after"]["score_mean"] for r in runs),
        "heldout_score_by_seed": [round(r["heldout_after"]["score_mean"], 3) for r in runs],
        "load_avg": med([(r["load_before"] + r["load_after"]) / 2 for r in runs]),
    }


def table(summary: dict, before: dict) -> str:
    ours, trl = summary["ours"], summary["trl"]
    rows = [
        ("episodes/s (median)", "episodes_per_s", "{:.2f}"),
        ("rollout ms/episode", "rollout_ms_per_episode", "{:.1f}"),
        ("  of which generation", "generation_ms_per_episode", "{:.1f}"),
        ("update ms/episode", "update_ms_per_episode", "{:.1f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
        ("score, first rollout", "score_first_step", "{:+.3f}"),
        ("score, last rollout", "score_last_step", "{:+.3f}"),
        ("KL, last rollout", "kl_last_step", "{:.2f}"),
        ("held-out score after", "heldout_score_after", "{:+.3f}"),
        ("  (standard error)", "heldout_score_se", "{:.3f}"),
        ("  mean over seeds", "heldout_score_mean_over_seeds", "{:+.3f}"),
        ("load average", "load_avg", "{:.1f}"),
    ]
    lines = [f"{'':26s}{'ours':>12s}{'TRL 1.12':>12s}{'ours/TRL':>10s}"]
    for label, key, fmt in rows:
        ratio = ours[key] / trl[key] if key in ("episodes_per_s", "peak_rss_mib") and trl[key] else None
        lines.append(f"{label:26s}{fmt.format(ours[key]):>12s}{fmt.format(trl[key]):>12s}"
                     f"{'' if ratio is None else f'{ratio:.2f}x':>10s}")
    lines.append(f"{'held-out score before':26s}{before['score_mean']:>+12.3f}  (the shared starting policy)")
    lines.append(f"{'held-out after, by seed':26s}ours {ours['heldout_score_by_seed']}, TRL {trl['heldout_score_by_seed']}")
    return "\n".join(lines)


def heldout_before(models: Path, setup: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.trl_ppo_peer import heldout_score, read_prompts

    tok = AutoTokenizer.from_pretrained(models / "policy")
    policy = AutoModelForCausalLM.from_pretrained(models / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    return heldout_score(policy, rm, tok, read_prompts(models / "eval_prompts.jsonl"), setup["max_new_tokens"],
                         setup["temperature"], seed=setup["seed"])


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ppo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per side; medians are reported")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both sides (default: the CPUs idle now, at least 1)")
    ap.add_argument("--sides", default="trl,ours", help="which sides to run (trl, ours or both)")
    ap.add_argument("--out", type=Path, default=BENCH / "ppo_result.json")
    ap.add_argument("--models", type=Path, default=BENCH / "ppo_models", help="where the shared models go")
    ap.add_argument("--use-run", type=Path, default=None,
                    help="a run dir (e.g. runs/tiny) whose sft/ and reward/ artifacts replace the synthetic models")
    ap.add_argument("--also-run", type=Path, default=None,
                    help="after the synthetic comparison, the same on this run dir's artifacts (answers that end "
                         "at EOS: the realistic case); both ratios are reported")
    for f in fields(BenchSetup):
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                        type=float if f.type in ("float", "float | None") else int)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.threads is None:
        # More threads than idle cores makes OpenMP spin against other processes: a 1-thread run
        # on a loaded 2-core box measured 1.2 s where 2 threads took 0.5-44 s for the same generation.
        a.threads = max(1, min(os.cpu_count(), round(os.cpu_count() - os.getloadavg()[0])))
    setup = BenchSetup(**{f.name: getattr(a, f.name) for f in fields(BenchSetup) if getattr(a, f.name) is not None})
    torch.set_num_threads(a.threads)  # the model build and held-out scoring too: see the default above
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if not set(sides) <= {"trl", "ours"} or not sides:
        raise UserError(f"--sides takes trl, ours or trl,ours; got '{a.sides}'.")
    if "trl" in sides:
        ensure_peer_venv()
    result = compare(a, setup, sides, build_models(a, setup), "run" if a.use_run else "synthetic")
    if a.also_run is not None:
        # The realistic setting: a trained SFT policy whose answers end at EOS, scored by a trained reward model.
        from benchmarks import ppo_setup

        models = ppo_setup.from_run(a.also_run, a.models.with_name("ppo_models_from_run"), setup)
        result["realistic"] = compare(a, setup, sides, models, f"run {a.also_run}")
        if "speedup_ours_over_trl" in result:
            print(f"ours/TRL episodes/s: synthetic {result['speedup_ours_over_trl']:.2f}x, "
                  f"{a.also_run} {result['realistic']['speedup_ours_over_trl']:.2f}x")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


def compare(a, setup: BenchSetup, sides: list[str], models: Path, label: str) -> dict:
    """Both sides on one set of models, alternating, `a.repeats` times; returns the result record."""
    setup_saved = json.loads((models / "setup.json").read_text())
    before = heldout_before(models, setup_saved)
    print(f"benchmarks.ppo [{label}]: {setup.total_episodes} episodes of batch {setup.batch_size}, "
          f"{setup.max_new_tokens} new tokens, {setup.ppo_epochs} epochs x {setup.num_minibatches} minibatches, "
          f"{a.threads} threads, {a.repeats} repeat(s); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    work = BENCH / "ppo_runs"
    work.mkdir(parents=True, exist_ok=True)
    for r in range(a.repeats):
        order = sides if r % 2 == 0 else sides[::-1]  # alternate, so a load change hits both sides alike
        for side in order:
            # Repeat r trains with seed + r on both sides: the learning comparison then spans seeds
            # (ours is deterministic for a seed, so equal seeds would only repeat one trajectory).
            runs[side].append(run_side(side, models, a.threads, work / f"{side}_{r}.json",
                                       seed=setup_saved["seed"] + r))
    summary = {s: summarise(rs) for s, rs in runs.items()}
    result = {"setting": label, "setup": setup_saved, "threads": a.threads, "cpus": os.cpu_count(),
              "repeats": a.repeats, "heldout_before": before, "summary": summary, "runs": runs,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if len(summary) == 2:
        result["speedup_ours_over_trl"] = summary["ours"]["episodes_per_s"] / summary["trl"]["episodes_per_s"]
        # Each repeat ran both sides back to back: their ratio is less exposed to load drifting over the run.
        result["paired_speedups"] = [round(o["episodes_per_s"] / t["episodes_per_s"], 3)
                                     for o, t in zip(runs["ours"], runs["trl"])]
        print(table(summary, before))
        verdict = "meets" if result["speedup_ours_over_trl"] >= 1.5 else "MISSES"
        print(f"[{label}] ours/TRL episodes/s: {result['speedup_ours_over_trl']:.2f}x ({verdict} the 1.5x target); "
              f"per repeat: {', '.join(f'{x:.2f}x' for x in result['paired_speedups'])}")
    return result


def build_models(a, setup: BenchSetup) -> Path:
    from benchmarks import ppo_setup

    if a.use_run is None:
        return ppo_setup.build(a.models, setup)
    return ppo_setup.from_run(a.use_run, a.models.with_name("ppo_models_from_run"), setup)


if __name__ == "__main__":
    main_guard(main)()
