"""Run outputs written by rank 0: the CSV log (rewritten atomically from the history each epoch, so a
resumed run's log equals an uninterrupted one's), TensorBoard scalars, and JSON files."""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

from .checkpoint import atomic_write_text


def write_csv(path: Path, history: list[dict]) -> Path:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, data: dict) -> Path:
    return atomic_write_text(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


EVENT_FILES = "events.out.tfevents.*"  # (the files TensorBoard's writers name so, in a run's tb folder)


class TensorBoardLog:
    """Scalars per epoch under ``folder`` (step: the epoch, from 1). Opening it removes the event files ``folder``
    holds, from this run before a resume (an earlier run's are refused or removed by :meth:`Trainer.fit`), and logs
    ``history`` again: TensorBoard shows the run's history as log.csv does, with no epoch twice or missing (also one
    a crash between checkpoint and log left out). (Removed, not purged by step: TensorBoard reads event files in the
    order of their names, and two written in the same second by one process are named by a counter, so that
    ``...tfevents.<s>.<host>.<pid>.10`` sorted before ``...9`` and the older file's steps won.)"""

    def __init__(self, folder: Path, history: list[dict] = ()):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is an optional dependency of neurosim
            warnings.warn(f"TensorBoard logging skipped: {err} (pip install tensorboard)", stacklevel=2)
            self.writer = None
            return
        for old in Path(folder).glob(EVENT_FILES):
            old.unlink()
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=1)
        for row in history:
            self.log(row)

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        epoch = row["epoch"]
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                tag = k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k
                self.writer.add_scalar(tag, v, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
