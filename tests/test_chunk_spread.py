"""benchmarks/chunk_spread.py: the spread and mean-distance statistics (pure, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import chunk_spread as cs


def test_spread_is_the_rms_sample_std_and_distance_the_rms_mean_gap():
    rng = np.random.default_rng(0)
    a = 0.02 * rng.standard_normal((64, 400, 2, 3))
    assert cs.spread(a) == pytest.approx(0.02, rel=0.03)
    assert cs.spread(3.0 * a) == pytest.approx(3.0 * cs.spread(a))
    b = a + 0.5  # the same samples shifted: same spread, mean distance 0.5
    assert cs.spread(b) == pytest.approx(cs.spread(a))
    assert cs.mean_distance(a, b) == pytest.approx(0.5)
    assert cs.mean_distance(a, a) == 0.0


def test_spread_needs_two_samples_per_window():
    with pytest.raises(ValueError, match="samples >= 2"):
        cs.spread(np.zeros((4, 1, 2, 3)))
    with pytest.raises(ValueError, match="samples >= 2"):
        cs.spread(np.zeros((4, 2, 3)))
