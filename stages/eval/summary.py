"""`python -m stages.eval.summary --config PRESET`: the results of a finished chain as dated markdown, read
from its artifacts (eval's report.json and every stage's manifest), so the numbers quoted in the README
and docs/results.md are pasted from the run they describe instead of typed by hand.

    python -m stages.eval.summary --config configs/tiny.yaml > /tmp/summary.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.artifacts.store import read_manifest
from pipeline.config.loader import load_config
from pipeline.errors import UserError, main_guard

CHAIN = ("data", "pretrain", "sft", "rank", "reward", "reward-stats", "ppo", "eval")


def _ci(d: dict | None, key: str = "win_rate", signed: bool = False) -> str:
    if not d or d.get(key) is None:
        return "n/a"
    f = "+.3f" if signed else ".3f"  # three places: 0.596 must not read as a 0.60 bar met
    interval = f" [{d['ci_low']:{f}}, {d['ci_high']:{f}}]" if d.get("ci_low") is not None else ""
    return f"**{d[key]:{f}}**{interval}"


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Each finished stage's wall time from its manifest (every process of a resumed run counted)."""
    out = {}
    for stage in CHAIN:
        m = read_manifest(run_dir / stage) or {}
        if m.get("status") == "complete" and m.get("wall_time_s") is not None:
            out[stage] = float(m["wall_time_s"])
    return out


def summary(run_dir: Path) -> str:
    report_path = run_dir / "eval" / "report.json"
    if not report_path.is_file():
        raise UserError(f"{report_path} does not exist: run `make eval` first (after the chain).")
    report = json.loads(report_path.read_text())
    created = (read_manifest(run_dir / "eval") or {}).get("created", "?")[:10]
    seconds = stage_seconds(run_dir)
    lines = [f"Run `{report.get('run')}`, evaluated {created}: stages took {sum(seconds.values()) / 60:.1f} min "
             "summed (" + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items()) + ").", ""]
    prompts = report.get("prompts") or {}
    for c in report.get("comparisons") or []:
        if c.get("baseline") != "sft":
            continue
        kl = (c.get("kl") or {}).get("k1_mean")
        lines += [f"{c['candidate']} against sft on {prompts.get('count')} test prompts ({prompts.get('source')}):",
                  f"- RM win rate {_ci(c.get('win_rate_rm'))}" + (f" at KL {kl:.2f} nats" if kl is not None else ""),
                  f"- gold: paired difference {_ci(c.get('gold_difference'), 'mean', signed=True)}, gold win rate "
                  f"{_ci(c.get('win_rate_gold'))}"]
    bar = report.get("quality_bar")
    if bar:
        lines.append(f"- verdict: \"{bar['verdict']}\"")
    models = report.get("models") or {}
    lm = (models.get("pretrain") or {}).get("lm") or {}
    baseline = (report.get("lm_baseline") or {}).get("lm") or {}
    if lm.get("bits_per_byte") is not None:
        bigram = f" (bigram baseline {baseline['bits_per_byte']:.2f})" if baseline.get("bits_per_byte") else ""
        lines += ["", f"Pretraining: {lm['bits_per_byte']:.2f} bits/byte on held-out text{bigram}."]
    golds = {n: m.get("gold_mean") for n, m in models.items() if m.get("gold_mean") is not None}
    if golds:
        lines.append("Mean gold of sampled answers: " + ", ".join(f"{n} {g:.3f}" for n, g in golds.items()) + ".")
    return "\n".join(lines) + "\n"


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.eval.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("CONFIG", "configs/tiny.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(summary(cfg.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
