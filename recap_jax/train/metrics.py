"""Metric writers (JSONL, TensorBoard via tensorboardX, optional wandb), a tqdm progress bar, and the
per-interval accumulator that keeps host transfers to one per logging interval.

Only process 0 writes (``enabled`` defaults to ``jax.process_index() == 0``); the others get no-op
writers, so the same script runs on one host or many.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np


def is_main_process() -> bool:
    return jax.process_index() == 0


class MetricWriter:
    """Writes scalar metrics to ``<logdir>/metrics.jsonl``, TensorBoard event files and (optionally) wandb.

    Args:
      logdir: directory (created on process 0).
      tensorboard: write event files with tensorboardX.
      wandb_project: when set and ``wandb`` is installed, also log there (``wandb_config`` as run config).
      enabled: default: only on process 0.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_config: Mapping[str, Any] | None = None,
        enabled: bool | None = None,
    ):
        self.enabled = is_main_process() if enabled is None else enabled
        self.logdir = Path(logdir)
        self._jsonl = self._tb = self._wandb = None
        if not self.enabled:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.logdir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.logdir / "tb"))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None:
                self._wandb = wandb.init(project=wandb_project, config=dict(wandb_config or {}), dir=str(self.logdir))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Logs host scalars (floats) at ``step``."""
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()} | {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), int(step))
        if self._wandb is not None:
            self._wandb.log(dict(scalars), step=int(step))

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a metrics JSONL file (a torn last line, from a killed writer, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class ProgressBar:
    """tqdm bar over training steps (rate and ETA), on process 0 only."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool | None = None, desc: str = "train"):
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            disable=not (is_main_process() if enabled is None else enabled),
            dynamic_ncols=True,
        )

    def update(self, n: int, postfix: Mapping[str, float] | None = None) -> None:
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class Accumulator:
    """Holds the device metric dicts of a logging interval; ``pop`` fetches them in one ``device_get``."""

    def __init__(self):
        self._items: list[tuple[int, Any]] = []

    def add(self, step: int, metrics: Any) -> None:
        self._items.append((step, metrics))

    def __len__(self) -> int:
        return len(self._items)

    def pop(self, extra: Any = None) -> tuple[list[tuple[int, dict]], Any]:
        """Returns ([(step, host metrics), ...], host ``extra``) with one device->host transfer."""
        steps = [s for s, _ in self._items]
        host, extra = jax.device_get(([m for _, m in self._items], extra))
        self._items = []
        return [(s, {k: float(np.asarray(v)) for k, v in m.items()}) for s, m in zip(steps, host)], extra


def mean_metrics(rows: list[tuple[int, dict]]) -> dict[str, float]:
    """Mean of each metric over the rows (non-finite values kept, so they show)."""
    keys = rows[0][1].keys()
    return {k: float(np.mean([r[k] for _, r in rows])) for k in keys}


def first_nonfinite(rows: list[tuple[int, dict]]) -> tuple[int, dict] | None:
    for step, m in rows:
        if not (math.isfinite(m.get("loss", 0.0)) and math.isfinite(m.get("grad_norm", 0.0))):
            return step, m
    return None
