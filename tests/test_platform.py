import os

import jax


def test_eight_cpu_devices_visible():
    assert jax.default_backend() == "cpu"
    assert jax.device_count() == 8, jax.devices()


def test_xla_flags_set_before_import():
    flags = os.environ["XLA_FLAGS"]
    assert "--xla_force_host_platform_device_count=8" in flags
    assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in flags


def test_compilation_cache_enabled():
    assert jax.config.jax_compilation_cache_dir
