"""Process-level JAX defaults, applied before JAX is imported.

XLA reads ``XLA_FLAGS`` once, when the backend starts: a flag set after ``import jax`` has run is
silently ignored. Every entry point of the project (``recap_jax``, ``envs``, the experiments and the
tests) imports this module first.

* ``--xla_cpu_enable_concurrency_optimized_scheduler=false``: without it ``jit(vmap(mjx.step))``
  was seen to hang on CPU at 64 envs (an idle XLA thread pool). The flag only touches the CPU
  backend, so it is harmless on GPU/TPU hosts.
* JAX's persistent compilation cache is switched on (``RECAP_JAX_CACHE_DIR`` or
  ``JAX_COMPILATION_CACHE_DIR``, default ``~/.cache/recap_jax/jax_cache``) so that stages and test
  sessions reuse compiled MJX and model functions.
"""

from __future__ import annotations

import os
import sys

CPU_HANG_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "recap_jax", "jax_cache")


def apply_xla_flags() -> None:
    """Appends the CPU scheduler flag to ``XLA_FLAGS`` (no-op once JAX is imported)."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_HANG_FLAG}".strip()


def enable_compilation_cache(cache_dir: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache; returns the directory used."""
    import jax

    path = (
        cache_dir
        or os.environ.get("RECAP_JAX_CACHE_DIR")
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or DEFAULT_CACHE_DIR
    )
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache everything that took a noticeable time to compile (MJX functions take 10-45 s on CPU).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


apply_xla_flags()
