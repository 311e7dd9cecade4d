"""`python -m faults`: run the fault-injection suite and print its report table (see faults/suite.py)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from faults.distributed import check_distributed, check_other_count
from faults.stages import STAGES
from faults.suite import Report, Suite, format_table

CHECKS = ("kills", "change", "diverge", "disk", "twice", "distributed")
# The stages the distributed checks launch on 2 processes (faults/distributed.py): a training loop of our own,
# the sampling stage, and PPO.
LAUNCHED = ("pretrain", "rank", "ppo")
# Killed on 2 processes, re-run on 1 (faults/distributed.py, other-count): our loop, a Trainer stage that
# resumes on another count and one that refuses.
OTHER_COUNT = ("pretrain", "sft", "grpo")


def run_suite(out: Path, *, stages=tuple(s for s in STAGES if s.kill), kills: int = 20, per_trial: int = 2, checks=CHECKS, seed: int = 0,
              log=print) -> list[Report]:
    suite = Suite(out, stages, seed=seed, log=log)
    suite.build_reference()
    reports = []
    for stage in suite.stages:
        rep = Report(stage.name)
        t0 = time.perf_counter()
        if "kills" in checks:
            suite.kill_trials(stage, kills, per_trial, rep)
        if "change" in checks:
            suite.check_change(stage, rep)
        if "diverge" in checks:
            suite.check_diverge(stage, rep)
        if "disk" in checks:
            suite.check_disk_full(stage, rep)
        if "twice" in checks:
            suite.check_twice(stage, rep)
        if "distributed" in checks and stage.name in LAUNCHED:
            check_distributed(suite, stage, rep, log=log)
        if "distributed" in checks and stage.name in OTHER_COUNT:
            check_other_count(suite, stage, rep, log=log)
        log(f"{stage.name}: {rep.kills} kills in {rep.trials} trials, {time.perf_counter() - t0:.0f}s, "
            f"{len(rep.failures)} failure(s) {rep.checks}")
        for f in rep.failures:
            log(f"  FAILED {f}")
        reports.append(rep)
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=20, help="kill -9 per stage (default 20)")
    ap.add_argument("--per-trial", type=int, default=2, help="kills before a run may finish (default 2)")
    ap.add_argument("--stages", default=",".join(s.name for s in STAGES if s.kill))
    ap.add_argument("--checks", default=",".join(CHECKS))
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = args.stages.split(",")
    stages = [s for s in STAGES if s.name in names]
    out = args.out or Path(tempfile.mkdtemp(prefix="faults-"))
    t0 = time.perf_counter()
    reports = run_suite(out, stages=stages, kills=args.kills, per_trial=args.per_trial,
                        checks=tuple(args.checks.split(",")), seed=args.seed)
    print(f"\nfault injection on {out} ({time.perf_counter() - t0:.0f}s):\n")
    print(format_table(reports))
    for r in reports:  # the 2-process checks (faults/distributed.py), beside the table's columns
        if "kill-rank" in r.checks:
            print(f"2 processes, {r.stage}: kill -9 of one rank {r.checks['kill-rank']}, "
                  f"two launches {r.checks.get('two-launches', '-')}")
        if "other-count" in r.checks:
            print(f"2 processes, {r.stage}: killed on 2, re-run on 1 {r.checks['other-count']}")
    tolerances = ", ".join(f"{s.name} {'bit-identical' if s.tolerance == 0 else f'within {s.tolerance:g}'}"
                           for s in stages)
    print(f"\nrequired: {tolerances}")
    failures = [f for r in reports for f in r.failures]
    print(f"\n{len(failures)} failure(s) (printed above)" if failures else "\nno failure")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
