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


def _jaxlib_version() -> tuple[int, int]:
    from importlib.metadata import version

    major, minor = version("jaxlib").split(".")[:2]
    return int(major), int(minor)


# XLA:CPU's older (non-"fusion emitter") code generator for the test session: at -O0 it compiled an MJX reset +
# step pair with 25-29% less CPU (60-63 -> 45 s) and the tiny policy's train step with 29% less (11.9 -> 8.5 s),
# run at the same speed and gave bit-identical states and losses (2026-12-04, jaxlib 0.10.2). Only where it was
# measured: XLA aborts the process on a flag it does not know, and later jaxlibs may drop this one.
if "xla_cpu_use_fusion_emitters" not in _flags and _jaxlib_version() == (0, 10):
    _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()

from recap_jax import _platform  # noqa: E402

_platform.enable_compilation_cache()

# The longest test files first. `make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: each file goes
# whole to one of two workers in collection order (xdist's default reorder sorts files by test count, which sent
# the two-test smoke file last), so a long file taken late (test_experiments_smoke.py runs make demo's demos, SFT
# and collection: ~10 minutes cold) would run alone after the other worker is done. The next ones are the
# slowest cold files (2026-12-04, seconds, with the flags above): the remaining files are short and even out the
# two workers' ends.
LONGEST_FIRST = (
    "test_experiments_smoke.py",  # 602
    "test_serve_evaluate.py",  # 136
    "test_expert.py",  # 102
    "test_env.py",  # 92
    "test_policy.py",  # 76
    "test_wrappers.py",  # 72
    "test_system0.py",  # 49
    "test_psi0_policy.py",  # 23
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order
