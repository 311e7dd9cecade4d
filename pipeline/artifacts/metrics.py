"""Metrics to `metrics.jsonl` and TensorBoard, and a progress bar that shows them.

Only the main process writes, by appending. On resume, lines from steps after the checkpoint (and a
line cut by a kill) are dropped, so the file reads as one uninterrupted run; the lines before stay,
and the file is replaced atomically, so a kill while dropping never loses them. A fresh start
(`resume_step=None`) begins a new file.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm


class MetricsLogger:
    def __init__(self, out_dir: str | Path, *, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _drop_rows_after(self.path, resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step)
            except ImportError:
                self._tb = None

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _drop_rows_after(path: Path, step: int | None) -> None:
    from pipeline.artifacts.atomic import write_text

    text = path.read_text()
    lines = [line for line in text.split("\n") if line]  # not splitlines(): U+2028 and U+0085 are text in JSON
    kept = []
    for line in lines if step is not None else []:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    if len(kept) < len(lines) or (text and not text.endswith("\n")):
        write_text(path, "".join(k + "\n" for k in kept))


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else None
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl (a file or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().split("\n"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True):
    """The one progress-bar style every stage uses (tqdm; set_postfix shows loss and tokens/s)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.5)
