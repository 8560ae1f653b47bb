"""Device mesh, the FSDP sharding rule, sharded initialisation and the jitted step.

The mesh has two axes: ``data`` (pure data parallelism) and ``fsdp`` (data parallelism whose devices
also split the large parameters and their optimizer moments). Batches are sharded over both axes on
their leading dimension. The rule is shape-based: an array of rank >= 2 with at least
``min_size_bytes`` bytes is split along its largest dimension divisible by the ``fsdp`` size; every
other array (biases, norms, scalars, keys, small matrices) is replicated. Works unchanged on one CPU,
one GPU, or many hosts (the mesh spans ``jax.devices()``, i.e. all processes' devices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
MESH_AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)
DEFAULT_MIN_SIZE_BYTES = 4 * 2**20


def make_mesh(fsdp: int = 1, data: int | None = None, devices: list | None = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` (default: all devices of all processes).

    Args:
      fsdp: size of the fsdp axis.
      data: size of the data axis (default: number of devices // fsdp).
    Raises ``ValueError`` when the sizes do not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must be a positive divisor of the device count {n}")
    data = n // fsdp if data is None else data
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} != {n} devices")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), MESH_AXES)


def fsdp_spec(shape: tuple[int, ...], itemsize: int, mesh: Mesh, min_size_bytes: int = DEFAULT_MIN_SIZE_BYTES) -> P:
    """The partition spec the FSDP rule gives an array of ``shape``.

    Returns ``P()`` (replicated) for rank < 2, small arrays, or no dimension divisible by the fsdp size;
    otherwise ``"fsdp"`` on the largest divisible dimension.
    """
    n = mesh.shape[FSDP]
    size = int(np.prod(shape)) * itemsize if shape else itemsize
    if n == 1 or len(shape) < 2 or size < min_size_bytes:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % n == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    spec = [None] * len(shape)
    spec[axis] = FSDP
    return P(*spec)


def state_shardings(abstract: Any, mesh: Mesh, min_size_bytes: int = DEFAULT_MIN_SIZE_BYTES) -> Any:
    """NamedShardings for every array leaf of ``abstract`` (a pytree of arrays or ShapeDtypeStructs)."""

    def rule(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, fsdp_spec(tuple(x.shape), np.dtype(x.dtype).itemsize, mesh, min_size_bytes))

    return jax.tree.map(rule, abstract)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``("data", "fsdp")``; other axes replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args, min_size_bytes: int = DEFAULT_MIN_SIZE_BYTES):
    """Runs ``init_fn(*args)`` directly into its sharded layout: ``eval_shape`` -> shardings -> jitted init.

    Returns ``(tree, shardings)``; no full copy of a large parameter is ever materialised on one device.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, mesh, min_size_bytes)
    tree = jax.jit(init_fn, out_shardings=shardings)(*args)
    return tree, shardings


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings (the restore target for orbax)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def jit_train_step(train_step: Callable, state_shardings_: Any, mesh: Mesh, *, donate: bool = True) -> Callable:
    """``jax.jit`` of ``train_step(state, batch)`` with the state sharded by the rule, the batch split
    over the mesh, replicated metrics, and the input state donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings_, batch_sharding(mesh)),
        out_shardings=(state_shardings_, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host batch (this process's rows, numpy) -> global jax arrays sharded over the mesh.

    With one process this is a ``device_put``; with several, each process passes its own rows and
    ``make_array_from_process_local_data`` assembles the global batch (leading axis = sum of hosts' rows).
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
