"""Multi-host set-up: one ``jax.distributed.initialize`` path for CPU, GPU and TPU clusters.

Call ``initialize()`` first thing in a training script, before any JAX computation. It is a no-op for a
single process; with a coordinator address (argument or ``RECAP_COORDINATOR_ADDRESS`` +
``RECAP_NUM_PROCESSES`` + ``RECAP_PROCESS_ID``) it joins that job; with ``cluster=True`` it lets JAX
auto-detect the cluster (TPU pods, SLURM, Open MPI). Afterwards ``jax.devices()`` lists every
process's devices, ``make_mesh`` spans them, each process loads its own rows
(``WindowLoader(process_index=..., process_count=...)`` defaults to this process), and only process 0
logs and writes assets.
"""

from __future__ import annotations

import os

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cluster: bool = False,
    local_device_ids: list[int] | None = None,
    initialization_timeout: int = 300,
) -> tuple[int, int]:
    """Joins a multi-process JAX job (see the module docstring). Returns (process_index, process_count).

    On CPU, cross-process collectives use gloo (set here, before the backend starts).
    """
    coordinator_address = coordinator_address or os.environ.get("RECAP_COORDINATOR_ADDRESS")
    if num_processes is None and "RECAP_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["RECAP_NUM_PROCESSES"])
    if process_id is None and "RECAP_PROCESS_ID" in os.environ:
        process_id = int(os.environ["RECAP_PROCESS_ID"])
    if coordinator_address is None and not cluster:
        return jax.process_index(), jax.process_count()
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator {coordinator_address} given without num_processes/process_id "
            "(pass them or set RECAP_NUM_PROCESSES and RECAP_PROCESS_ID)"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
        )
    return jax.process_index(), jax.process_count()


def shutdown() -> None:
    """Leaves the job (a no-op for a single process)."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()
