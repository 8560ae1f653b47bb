"""Run-directory helpers shared by the stage scripts.

A study lives in one run directory::

    DIR/config.json              the StudyConfig of the study (written once; later stages read it)
    DIR/<stage>/stage.json       written last, atomically, when a stage finishes: its config slice,
                                 outputs and wall time. A stage whose marker exists, whose config
                                 slice matches and whose outputs exist is skipped (resume).

Stage names: ``demos``, ``sft``, ``collect``, ``value``, ``labels``, ``finetune``, ``evaluate``
(per iteration ``k > 0``: ``<stage>_it{k}``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from experiments.presets import PRESETS, StudyConfig, get_preset

MARKER = "stage.json"


class StageError(RuntimeError):
    """A stage cannot run (a missing input, a missing module, a mismatching earlier run)."""


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _default(x: Any) -> Any:
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _marker_dict(x)
    return str(x)


def _marker_dict(x: Any) -> dict:
    """A dataclass's fields by name (nested ones are serialised by ``_default`` in turn), without the fields marked
    ``metadata={"marker": "omit_default"}`` that hold their default: a setting added later leaves the markers of
    runs made before it valid."""
    fields = dataclasses.fields(x)
    return {
        f.name: getattr(x, f.name)
        for f in fields
        if not (f.metadata.get("marker") == "omit_default" and getattr(x, f.name) == f.default)
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_default))


# ---- config ---------------------------------------------------------------------------------------


def config_from_dict(d: Mapping[str, Any]) -> StudyConfig:
    """Rebuilds a StudyConfig from its ``to_dict()`` form (tuples restored)."""
    base = get_preset(d["name"]) if d.get("name") in PRESETS else get_preset("smoke")
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(StudyConfig):
        if f.name not in d:
            continue
        cur = getattr(base, f.name)
        val = d[f.name]
        if dataclasses.is_dataclass(cur):
            sub = {}
            for sf in dataclasses.fields(cur):
                if sf.name in val:
                    v = val[sf.name]
                    sub[sf.name] = tuple(v) if isinstance(v, list) else v
            changes[f.name] = dataclasses.replace(cur, **sub)
        elif f.name in ("policy", "value"):
            changes[f.name] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in val)
        else:
            changes[f.name] = val
    return dataclasses.replace(base, **changes)


def read_config(out: str | os.PathLike) -> StudyConfig:
    """The config of an existing run directory, read only (nothing is written): ``ValueError`` naming
    ``OUT/config.json`` when it is missing or unreadable."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing; {out} is not a study run directory (no config.json)")
    try:
        return config_from_dict(read_json(path))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: not a study config ({e})") from e


def load_or_init_config(out: str | os.PathLike, preset: str | None, seed: int | None = None) -> StudyConfig:
    """The run directory's config; a new directory takes the named preset (and seed) and records it.

    A preset or seed that disagrees with an existing run directory raises ``StageError``.
    """
    out = Path(out)
    if (out / "config.json").exists():
        cfg = read_config(out)
        if preset is not None and preset != cfg.name:
            raise StageError(f"{out} holds a {cfg.name!r} study; use another --out for preset {preset!r}")
        if seed is not None and seed != cfg.seed:
            raise StageError(f"{out} holds seed {cfg.seed}; use another --out for seed {seed}")
        return cfg
    cfg = get_preset(preset or "smoke")
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    save_config(out, cfg)
    return cfg


def save_config(out: str | os.PathLike, cfg: StudyConfig) -> None:
    atomic_write_json(Path(out) / "config.json", cfg.to_dict())


# ---- stage markers --------------------------------------------------------------------------------


def stage_dir(out: str | os.PathLike, stage: str) -> Path:
    d = Path(out) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def stage_done(out: str | os.PathLike, stage: str, cfg_slice: Any, rerun_mismatch: bool = False) -> dict | None:
    """The stage's marker if it finished with this config and its listed outputs exist, else None.

    A marker written with another config raises ``StageError``, or with ``rerun_mismatch`` is reported and
    treated as absent (the stage reruns and overwrites it)."""
    path = Path(out) / stage / MARKER
    if not path.exists():
        return None
    try:
        marker = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    if marker.get("config") != _jsonable(cfg_slice):
        if rerun_mismatch:
            print(f"[{stage}] marker made with other settings: rerunning", flush=True)
            return None
        raise StageError(
            f"{path} was written with a different config; use a fresh --out (or delete {path.parent}) to rerun"
        )
    for rel in marker.get("files", []):
        if not (Path(out) / rel).exists():
            return None
    return marker


def mark_done(
    out: str | os.PathLike,
    stage: str,
    cfg_slice: Any,
    outputs: Mapping[str, Any],
    seconds: float,
    files=(),
    timing: Mapping[str, Any] | None = None,
) -> dict:
    marker = {
        "stage": stage,
        "config": _jsonable(cfg_slice),
        "outputs": _jsonable(dict(outputs)),
        "seconds": round(float(seconds), 2),
        "timing": _jsonable(dict(timing or {})),
        "files": [str(f) for f in files],
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(Path(out) / stage / MARKER, marker)
    return marker


@contextlib.contextmanager
def timer() -> Iterator[dict]:
    t = {"start": time.perf_counter()}
    try:
        yield t
    finally:
        t["seconds"] = time.perf_counter() - t["start"]


# JAX's own compile-time events (jax.monitoring), summed per process: tracing, lowering to MLIR, and the
# backend compile, which also covers loading a program from the persistent compilation cache.
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_s",
}
_BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"  # once per program compiled or loaded from the cache
_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "cache_hits"}
_compile_totals: dict[str, float] = {}


def _listen_to_compiles() -> None:
    if _compile_totals:
        return
    import jax

    _compile_totals.update(dict.fromkeys([*_COMPILE_EVENTS.values(), *_CACHE_EVENTS.values(), "programs"], 0.0))

    def on_duration(event: str, duration: float, **_: Any) -> None:
        if event in _COMPILE_EVENTS:
            _compile_totals[_COMPILE_EVENTS[event]] += float(duration)
        if event == _BACKEND_EVENT:
            _compile_totals["programs"] += 1

    def on_event(event: str, **_: Any) -> None:
        if event in _CACHE_EVENTS:
            _compile_totals[_CACHE_EVENTS[event]] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)


@contextlib.contextmanager
def stage_clock() -> Iterator[dict]:
    """Wall, process-CPU and JAX compile time of the block (``{"seconds", "timing"}`` once it ends).

    ``timing``: ``cpu_s`` (this process's user + system CPU: the work it did, less inflated than the wall
    time on a loaded machine), ``compile_s`` (JAX tracing + lowering + backend compile, loads from the
    persistent compilation cache included), ``compiled`` (programs compiled, small ones included, because
    the persistent cache missed or was not used) and ``cache_hits`` (programs loaded from it). Calls served
    by JAX's in-memory caches compile nothing and count nothing.
    """
    _listen_to_compiles()
    before, cpu0 = dict(_compile_totals), time.process_time()
    with timer() as t:
        try:
            yield t
        finally:
            d = {k: _compile_totals[k] - before[k] for k in _compile_totals}
            t["timing"] = {
                "cpu_s": round(time.process_time() - cpu0, 1),
                "compile_s": round(d["trace_s"] + d["lower_s"] + d["backend_s"], 1),
                "compiled": int(d["programs"] - d["cache_hits"]),
                "cache_hits": int(d["cache_hits"]),
            }


# ---- provenance and logging -----------------------------------------------------------------------


def provenance() -> dict[str, Any]:
    import jax

    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host": platform.node(),
        "argv": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class JsonlLogger:
    """Appends one JSON object per call (host 0 only); also echoes a short line to stdout."""

    def __init__(self, path: str | os.PathLike, echo: bool = True):
        import jax

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo and jax.process_index() == 0
        self.active = jax.process_index() == 0

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        row = {
            "step": int(step),
            **{k: _default(v) if not isinstance(v, (int, float, str)) else v for k, v in metrics.items()},
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.echo:
            nums = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            print(f"  [{self.path.parent.name}] step {step} {nums}", flush=True)


def setup_jax() -> None:
    """Entry-point set-up: XLA flags (via the recap_jax import) and the persistent compilation cache."""
    from recap_jax import _platform

    _platform.enable_compilation_cache()


def require(module: str, stage: str):
    """Imports a stage module, or fails with a message naming the missing stage."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise StageError(f"stage {stage!r} needs {module}, which is not available: {e}") from e


# ---- CLI ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """Common CLI of the stage scripts.

    Attributes:
      out: the run directory (created; its config.json pins the preset for every later stage).
      preset: a preset name, e.g. smoke | demo | cpu | cpu_power | gpu (default: the run directory's, else smoke).
      seed: the study seed (default: the preset's).
    """

    out: Path
    preset: str | None = None
    seed: int | None = None


def stage_main(run_fn, description: str, argv=None) -> dict:
    """Parses ``StageArgs``, sets up JAX and runs ``run_fn(cfg, out)``."""
    import tyro

    args = tyro.cli(StageArgs, args=argv, description=description)
    setup_jax()
    cfg = load_or_init_config(args.out, args.preset, args.seed)
    return run_fn(cfg, args.out)


def run_stage(
    out, stage: str, cfg_slice: Any, fn, files_fn=None, force: bool = False, rerun_mismatch: bool = False
) -> dict:
    """Runs ``fn() -> outputs`` unless the stage's marker validates; writes the marker; returns it.
    ``rerun_mismatch``: a marker of other settings reruns the stage instead of raising (``stage_done``)."""
    if not force:
        done = stage_done(out, stage, cfg_slice, rerun_mismatch)
        if done is not None:
            print(f"[{stage}] done earlier ({done['seconds']:.1f} s): skipped", flush=True)
            return done
    print(f"[{stage}] running", flush=True)
    with stage_clock() as t:
        outputs = fn()
    files = files_fn(outputs) if files_fn else ()
    marker = mark_done(out, stage, cfg_slice, outputs, t["seconds"], files, t["timing"])
    tm = t["timing"]
    print(
        f"[{stage}] finished in {t['seconds']:.1f} s (compile {tm['compile_s']:.1f} s: {tm['compiled']} programs "
        f"compiled, {tm['cache_hits']} from the cache; CPU {tm['cpu_s']:.1f} s)",
        flush=True,
    )
    return marker
