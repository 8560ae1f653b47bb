"""Test configuration: CPU with 8 host devices, set before JAX is imported anywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _flags:
    _flags += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
# LLVM at -O0 for the test session's own programs: the suite is dominated by compiling (MJX reset/step, the policy
# and value programs), and -O0 cut the CPU time of test_expert + test_wrappers by 27% and of test_policy +
# test_value_net + test_sharding by 25% from an empty cache (2026-12-04), every assertion unchanged (it changes
# the machine code's speed, not the program XLA builds). The demo subprocess of test_experiments_smoke.py sets
# the Makefile's flags itself, so `make demo`'s programs and numbers are tested as they are.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

from recap_jax import _platform  # noqa: E402

_platform.enable_compilation_cache()

# The longest test file first. `make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: each file
# goes whole to one of two workers in collection order (xdist's default reorder sorts files by test count,
# which sent the two-test smoke file last), so a long file taken late (test_experiments_smoke.py runs make
# demo's demos, SFT and collection: several minutes cold) would run alone after the other worker is done.
LONGEST_FIRST = ("test_experiments_smoke.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: files keep their order
