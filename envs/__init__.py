"""Environments: ``envs.make(name, **overrides)`` and the registry of environment names.

Importing ``envs`` applies the project's process-level JAX defaults (the CPU scheduler flag without which
``jit(vmap(mjx.step))`` can hang on CPU) before JAX is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from recap_jax import _platform  # noqa: F401  (sets XLA flags before JAX is imported)


def _g1_bendpick(**overrides: Any):
    from envs.g1.bendpick import G1BendPick

    return G1BendPick(**overrides)


_REGISTRY: dict[str, Callable[..., Any]] = {"G1BendPick-v0": _g1_bendpick}


def registered() -> tuple[str, ...]:
    """The registered environment names."""
    return tuple(sorted(_REGISTRY))


def make(name: str, **overrides: Any):
    """Builds a registered environment; ``overrides`` are fields of its config (e.g. ``camera=True``).

    Raises ValueError for an unknown name (naming the closest registered one) or an unknown config field.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.0)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown environment {name!r}{hint} Registered: {', '.join(registered())}")
    return _REGISTRY[name](**overrides)


def register(name: str, factory: Callable[..., Any]) -> None:
    """Registers ``factory(**overrides) -> env`` under ``name`` (raises ValueError if taken)."""
    if name in _REGISTRY:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory
