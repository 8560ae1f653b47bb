"""LeRobot v2.1 import/export throughput (frames/s) on CPU → ``benchmarks/RESULTS.md`` (section lerobot_throughput_cpu).

Export: a synthetic store of ``--episodes`` x ``--steps`` steps, every step imaged at 96x160, → parquet +
H.264 mp4. Import: that dataset back (decode, no resize), and the shared-layout sample
(tests/data/lerobot_simple_sample, 360x640 decode + resize to 96x160), repeated ``--repeats`` times.

    PYTHONPATH=. JAX_PLATFORMS=cpu python -m benchmarks.lerobot_throughput
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._results import machine_description, markdown_table, write_section
from recap_jax.data import lerobot
from recap_jax.data.store import Episode, EpisodeStore

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "lerobot_simple_sample"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        store = EpisodeStore(d / "store", create=True)
        t = a.steps
        base = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
        eps = [
            Episode(
                i,
                rng.normal(size=(t, 32)).astype(np.float32),
                rng.normal(size=(t, 36)).astype(np.float32),
                np.arange(t, dtype=np.int32),
                np.stack([np.roll(base, k, axis=1) for k in range(t)]),
                "bend to pick up the box",
                True,
                t,
                {"kind": "rollout"},
            )
            for i in range(a.episodes)
        ]
        store.append(eps)
        frames = a.episodes * t
        t0 = time.perf_counter()
        lerobot.export_lerobot(d / "store", d / "ds")
        dt = time.perf_counter() - t0
        rows.append(["export (96x160, every step imaged)", frames, f"{dt:.2f}", f"{frames / dt:.0f}"])
        t0 = time.perf_counter()
        lerobot.import_lerobot(d / "ds", d / "back", image_size=(96, 160))
        dt = time.perf_counter() - t0
        rows.append(["import our export (96x160, no resize)", frames, f"{dt:.2f}", f"{frames / dt:.0f}"])
        lerobot.import_lerobot(SAMPLE, d / "warm", image_size=(96, 160))  # jit warm-up of the resize
        times = []
        for r in range(a.repeats):
            t0 = time.perf_counter()
            lerobot.import_lerobot(SAMPLE, d / f"sample{r}", image_size=(96, 160))
            times.append(time.perf_counter() - t0)
        dt = float(np.median(times))
        rows.append(["import SIMPLE-layout sample (360x640 → 96x160)", 89, f"{dt:.2f}", f"{89 / dt:.0f}"])
    load = os.getloadavg()[0]
    body = (
        f"Machine: {machine_description()} (a 2-core CPU shared with other jobs; 1-min load average {load:.1f}, "
        "so numbers are noisy). PyAV libx264 / pyarrow; frames/s counts parquet rows with their video frame.\n\n"
        + markdown_table(["operation", "frames", "seconds", "frames/s"], rows)
    )
    write_section("lerobot_throughput_cpu", body)
    print(body)


if __name__ == "__main__":
    main()
