"""Checkpoints with orbax: the whole train state, the loader position, inference params and assets.

Layout under ``directory``::

    checkpoints/<step>/state    the TrainState (params, optimizer state, step, rng, EMA) — for resume
    checkpoints/<step>/loader   the loader position {"epoch", "step", "seed"} (JSON)
    checkpoints/<step>/params   inference params (the EMA when on) — what later stages load
    checkpoints/<step>/assets   JSON: normalisation stats (frozen at SFT, reused by every later stage),
                                config, provenance (git commit, preset, seed)
    best/<step>/{params,assets} the best checkpoints by ``best_metric`` (optional; e.g. the value loss)

``checkpoints/`` keeps the last ``max_to_keep`` steps. Saves are asynchronous (orbax writes to a
temporary directory and renames it when complete), so a process killed mid-save leaves the previous
complete step as the latest; ``restore`` resumes from it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from recap_jax.train.state import TrainState

PyTree = Any
NORM_KEYS = ("state_min", "state_max", "action_min", "action_max")


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return repr(x)


def git_commit(path: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``path`` (this package by default), with a
    ``-dirty`` suffix when tracked files are modified; "unknown" outside a repository."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def make_assets(
    norm_stats: Any, *, config: Any = None, preset: str | None = None, seed: int | None = None, **extra: Any
) -> dict:
    """The assets record saved next to the inference params.

    Args:
      norm_stats: mapping or object with ``state_min``/``state_max`` [32] and ``action_min``/``action_max``
        [36] (the loader's ``norm_stats`` dict or the policy's ``NormStats``).
      config: any dataclass/dict (stored as JSON).
      preset, seed, extra: provenance; the git commit is added automatically.
    """
    get = norm_stats.get if isinstance(norm_stats, dict) else lambda k: getattr(norm_stats, k, None)
    missing = [k for k in NORM_KEYS if get(k) is None]
    if missing:
        raise ValueError(f"norm_stats lacks {missing}")
    return {
        "norm_stats": {k: np.asarray(get(k), np.float32).tolist() for k in NORM_KEYS},
        "config": _jsonable(config),
        "provenance": {"git_commit": git_commit(), "preset": preset, "seed": seed} | _jsonable(extra),
    }


def norm_stats_from_assets(assets: dict) -> dict[str, np.ndarray]:
    """The float32 arrays of an assets record's normalisation statistics."""
    return {k: np.asarray(assets["norm_stats"][k], np.float32) for k in NORM_KEYS}


def abstract_like(tree: PyTree) -> PyTree:
    """ShapeDtypeStructs (with the arrays' shardings) for a concrete pytree, or the tree itself if abstract."""

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, tree)


class Checkpointer:
    """Saves and restores a training run (see the module docstring).

    Args:
      directory: run directory (created).
      max_to_keep: keep the last N steps in ``checkpoints/``.
      best_metric: a metric name passed to ``save(..., metrics=...)``; when set, ``best/`` keeps the
        ``keep_best`` best inference params + assets by it.
      best_mode: "min" or "max".
      async_save: write in a background thread (``wait()`` blocks until done).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        keep_best: int = 1,
        async_save: bool = True,
    ):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(
            self.directory / "checkpoints",
            item_names=("state", "loader", "params", "assets"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
        )
        self.best = None
        if best_metric is not None:
            self.best = ocp.CheckpointManager(
                self.directory / "best",
                item_names=("params", "assets"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep_best,
                    create=True,
                    enable_async_checkpointing=async_save,
                    best_fn=lambda m: float(m[best_metric]),
                    best_mode=best_mode,
                    keep_checkpoints_without_metrics=False,
                ),
            )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        state: TrainState,
        *,
        loader_state: dict | None = None,
        assets: dict | None = None,
        metrics: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` at ``int(state.step)`` (async). Returns whether a save was started.

        ``metrics`` (host floats) feed the best-checkpoint choice; they must contain ``best_metric``
        when one is configured.
        """
        step = int(jax.device_get(state.step))
        items = {
            "state": ocp.args.StandardSave(state),
            "loader": ocp.args.JsonSave(dict(loader_state or {})),
            "params": ocp.args.StandardSave(state.inference_params),
            "assets": ocp.args.JsonSave(dict(assets or {})),
        }
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if self.best is not None and saved:
            if metrics is None or self.best_metric not in metrics:
                raise ValueError(f"save() needs metrics[{self.best_metric!r}] to keep the best checkpoint")
            best_items = {k: items[k] for k in ("params", "assets")}
            self.best.save(step, args=ocp.args.Composite(**best_items), metrics=_jsonable(metrics), force=True)
        return bool(saved)

    def restore(self, target: PyTree, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores the train state and loader position at ``step`` (default: the latest complete one).

        Args:
          target: a TrainState of arrays or ShapeDtypeStructs (with shardings: the restored arrays are
            placed the same way), e.g. ``sharding.abstract_with_shardings(eval_shape(init), shardings)``.
        Returns: (state, loader position dict, empty when none was saved).
        Raises ``FileNotFoundError`` when there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory / 'checkpoints'}")
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(target)), loader=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["loader"] or {})

    def wait(self) -> None:
        """Blocks until pending async saves are complete."""
        self.manager.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()
        if self.best is not None:
            self.best.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reader(directory: str | os.PathLike, best: bool) -> tuple[ocp.CheckpointManager, Path]:
    sub = Path(directory).absolute() / ("best" if best else "checkpoints")
    if not sub.exists():
        raise FileNotFoundError(f"no checkpoints at {sub}")
    return ocp.CheckpointManager(sub, item_names=("params", "assets")), sub


def _pick_step(mgr: ocp.CheckpointManager, sub: Path, step: int | None, best: bool) -> int:
    if step is not None:
        return step
    step = mgr.best_step() if best else mgr.latest_step()
    if step is None:
        step = mgr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {sub}")
    return step


def load_inference_params(
    directory: str | os.PathLike,
    target: PyTree,
    *,
    step: int | None = None,
    best: bool = False,
    device: jax.Device | None = None,
) -> PyTree:
    """Inference params of a run (latest step, or the best one with ``best=True``).

    ``target``: params pytree of arrays or ShapeDtypeStructs (e.g. ``policy.abstract_policy(cfg)``);
    leaves are restored with the target's shardings (the training mesh's, for a concrete target).
    ``device``: restore every leaf whole onto this one device instead — what a rollout or an
    evaluation on one accelerator wants, whatever mesh the run was trained on.
    """
    abstract = abstract_like(target)
    if device is not None:
        one = jax.sharding.SingleDeviceSharding(device)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract)
    mgr, sub = _reader(directory, best)
    with mgr:
        step = _pick_step(mgr, sub, step, best)
        out = mgr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
    return out["params"]


def load_assets(directory: str | os.PathLike, *, step: int | None = None, best: bool = False) -> dict:
    """The assets record (norm stats, config, provenance) of a run's latest (or best) checkpoint."""
    mgr, sub = _reader(directory, best)
    with mgr:
        step = _pick_step(mgr, sub, step, best)
        out = mgr.restore(step, args=ocp.args.Composite(assets=ocp.args.JsonRestore()))
    return dict(out["assets"])
