"""Run logs: one CSV file per stream (train, val) and, optionally, TensorBoard.

Rows written after the step a run resumes from are dropped on resume, so the CSV of a resumed
run matches an uninterrupted one. TensorBoard is imported only when enabled.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_csv"]


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLogger:
    """``log(stream, step, **values)`` appends a row to ``<run>/<stream>_log.csv`` (main rank)."""

    def __init__(
        self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False,
        resume_step: int | None = None,
    ) -> None:  # fmt: skip
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer: Any = None
        self._columns: dict[str, list[str]] = {}
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in self.run_dir.glob("*_log.csv"):
            if resume_step is None:
                path.unlink()
            else:
                rows = [r for r in read_csv(path) if int(r["step"]) <= resume_step]
                self._rewrite(path, rows)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    @staticmethod
    def _rewrite(path: Path, rows: list[dict[str, str]]) -> None:
        if not rows:
            path.unlink()
            return
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    def log(self, stream: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        path = self.run_dir / f"{stream}_log.csv"
        row = {"step": step, **values}
        if stream not in self._columns:
            if path.is_file():
                with open(path, newline="") as f:
                    header = next(csv.reader(f), None)
                self._columns[stream] = header or list(row)
            else:
                self._columns[stream] = list(row)
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(self._columns[stream])
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._columns[stream], extrasaction="ignore")
            w.writerow(row)
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{stream}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
