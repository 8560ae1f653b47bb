"""The report reproduces the paper's printed numbers (RECAP-Ψ Table 1, Sec. 5.1, Sec. 6) from its counts."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from experiments import report

N = 500
# Table 1 of the paper as (successes, episodes, printed rate %, printed Wilson 95% CI %). The paper
# prints N = 500 for every row, but RECAP-low's numbers (21.5%, CI [18.1, 25.3], z = 3.35, difference
# CI [3.9, 14.7]) match 107 of 498 episodes, not 107 or 108 of 500 (see tests/test_stats.py).
PAPER_TABLE1 = {
    "sft_init": (180, N, "36.0%", "[31.9, 40.3]"),
    "sft_final": (243, N, "48.6%", "[44.2, 53.0]"),
    "bc_all": (91, N, "18.2%", "[15.1, 21.8]"),
    "recap_low": (107, 498, "21.5%", "[18.1, 25.3]"),
    "recap_high": (154, N, "**30.8%**", "[26.9, 35.0]"),
}


def _paper_results() -> dict:
    conds = {c: report.rate_summary(s, n) for c, (s, n, _, _) in PAPER_TABLE1.items()}
    comps = {
        name: report.compare_counts(
            conds[t]["successes"], conds[t]["episodes"], conds[c]["successes"], conds[c]["episodes"]
        )
        for name, (t, c) in report.COMPARISONS.items()
    }
    return {"preset": "paper", "conditions": conds, "comparisons": comps}


def test_table1_reproduces_paper_rows():
    labels = report.table_labels(20_000, 40_000, 100, 500)
    table = report.table1_markdown(_paper_results(), labels)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    expected_names = {
        "sft_init": "SFT@20k (rollout init)",
        "sft_final": "SFT@40k (context)",
        "bc_all": "BC-all",
        "recap_low": "RECAP-low",
        "recap_high": "**RECAP-high**",
    }
    for cond, (_, n, rate, ci) in PAPER_TABLE1.items():
        cells = [c.strip() for c in rows[expected_names[cond]].split("|")[1:-1]]
        assert cells[2:] == [str(n), rate, ci], (cond, cells)
    assert rows["SFT@20k (rollout init)"].split("|")[2].strip() == "100 expert demos"
    assert rows["BC-all"].split("|")[2].strip() == "500 rollouts, no token"


def test_comparisons_reproduce_paper_statistics():
    res = _paper_results()["comparisons"]
    hl, rb = res["high_vs_low"], res["recap_vs_bc"]
    # Sec. 5.1: +9.3 pts, z = 3.35; +12.6 pts, z = 4.63; both p < 0.001.
    assert round(100 * hl["diff"], 1) == 9.3 and round(hl["z"], 2) == 3.35 and hl["p"] < 1e-3
    assert round(100 * rb["diff"], 1) == 12.6 and round(rb["z"], 2) == 4.63 and rb["p"] < 1e-3
    # Sec. 6: difference CIs [3.9, 14.7] and [7.3, 17.9] (Wald, 95%).
    assert (round(100 * hl["diff_ci_low"], 1), round(100 * hl["diff_ci_high"], 1)) == (3.9, 14.7)
    assert (round(100 * rb["diff_ci_low"], 1), round(100 * rb["diff_ci_high"], 1)) == (7.3, 17.9)
    table = report.table1_markdown(_paper_results())
    assert "| RECAP-high vs RECAP-low | +9.3 | [3.9, 14.7] (Wald) | 3.35 | < 0.001 | n/a |" in table
    assert "| RECAP-high vs BC-all | +12.6 | [7.3, 17.9] (Wald) | 4.63 | < 0.001 | n/a |" in table


def _outcomes(successes: int, n: int, rng: np.random.Generator, limit: int = 600) -> report.Outcomes:
    success = np.zeros(n, bool)
    success[rng.choice(n, successes, replace=False)] = True
    steps = np.where(success, rng.integers(100, limit, n), limit)
    fell = ~success & (rng.random(n) < 0.2)
    steps = np.where(fell, rng.integers(50, limit, n), steps)
    return report.Outcomes(success=success, steps=steps, fell=fell)


def test_build_results_schema_and_files(tmp_path):
    rng = np.random.default_rng(0)
    counts = {"sft_init": 180, "sft_final": 243, "bc_all": 91, "recap_low": 108, "recap_high": 154}
    outcomes = {c: _outcomes(s, N, rng) for c, s in counts.items()}
    path = str(tmp_path / "recap_high.npz")
    outcomes["recap_high"].save(path)
    loaded = report.Outcomes.load(path)
    np.testing.assert_array_equal(loaded.success, outcomes["recap_high"].success)

    vf = {"mse": 0.062, "naive_mse": 0.13, "episode_auc": 0.703, "step_auc": 0.837, "kendall_tau": 0.294}
    results = report.build_results(
        preset="test",
        seed=3,
        provenance={"git": "abc"},
        outcomes=outcomes,
        value_function=vf,
        rollouts={"episodes": 500, "success_rate": 0.36},
        seconds={"sft": 1.0},
        episode_limit=600,
    )
    for c, s in counts.items():
        row = results["conditions"][c]
        assert row["successes"] == s and row["episodes"] == N and row["rate"] == pytest.approx(s / N)
        assert 0.0 <= row["ci_low"] < row["rate"] < row["ci_high"] <= 1.0
        assert row["failures"]["total"] == N - s
        assert row["failures"]["fell"] + row["failures"]["timeout"] + row["failures"]["other"] == N - s
        assert row["mean_steps_to_success"] >= 100
    for cmp in results["comparisons"].values():
        assert set(cmp) == {
            "diff",
            "diff_ci_low",
            "diff_ci_high",
            "z",
            "p",
            "mcnemar_p",
            "paired_ci_low",
            "paired_ci_high",
        }
        assert 0.0 <= cmp["mcnemar_p"] <= 1.0
        assert cmp["paired_ci_low"] < cmp["diff"] < cmp["paired_ci_high"]
    assert results["comparisons"]["recap_vs_bc"]["diff"] == pytest.approx((154 - 91) / N)

    calib = [
        {"value": np.linspace(-0.8, -0.05, 10), "return": np.linspace(-0.9, 0.0, 10), "success": True},
        {"value": np.full(10, -0.7), "return": np.full(10, -1.0), "success": False, "episode_id": 7},
    ]
    table = report.write_report(results, str(tmp_path / "out"), calibration=calib)
    assert "RECAP-high" in table and "episode_auc 0.703" in table
    for name in ("results.json", "table1.md", "fig2_success_rates.png", "fig6_differences.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0
    assert os.path.getsize(tmp_path / "out" / "fig4_value_calibration.png") > 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["conditions"]["bc_all"]["successes"] == 91


def test_mcnemar_is_paired():
    # Identical outcomes: no discordant pairs, no evidence of a difference.
    rng = np.random.default_rng(1)
    a = _outcomes(40, 100, rng)
    assert report.compare(a, a)["mcnemar_p"] == pytest.approx(1.0)
    b = report.Outcomes(success=np.ones(100, bool), steps=np.full(100, 50))
    assert report.compare(b, a)["mcnemar_p"] < 1e-3
    # Same marginal rates (30 vs 20 of 100), different pairing. An unpaired test sees the same two
    # proportions both times (same z, same p); McNemar and the paired interval must not.
    steps = np.full(100, 50)
    base = np.zeros(100, bool)
    t_nested, c_nested = base.copy(), base.copy()
    t_nested[:30], c_nested[:20] = True, True  # control's successes ⊂ treatment's: 10 vs 0 discordant
    t_split, c_split = base.copy(), base.copy()
    t_split[:30], c_split[30:50] = True, True  # disjoint successes: 30 vs 20 discordant
    nested = report.compare(report.Outcomes(t_nested, steps), report.Outcomes(c_nested, steps))
    split = report.compare(report.Outcomes(t_split, steps), report.Outcomes(c_split, steps))
    assert nested["p"] == split["p"] and nested["diff_ci_low"] == split["diff_ci_low"]
    assert nested["mcnemar_p"] == pytest.approx(2 / 2**10)
    assert split["mcnemar_p"] == pytest.approx(2 * sum(math.comb(50, i) for i in range(21)) / 2**50)
    assert split["mcnemar_p"] > 0.2 > 0.01 > nested["mcnemar_p"]
    assert nested["paired_ci_low"] > 0 > split["paired_ci_low"]
    assert nested["paired_ci_high"] - nested["paired_ci_low"] < split["paired_ci_high"] - split["paired_ci_low"]


def test_missing_condition_is_an_error():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="recap_low"):
        report.build_results(
            preset="x",
            seed=0,
            provenance={},
            outcomes={c: _outcomes(5, 10, rng) for c in report.CONDITIONS if c != "recap_low"},
            value_function=None,
            rollouts=None,
            seconds={},
        )


def test_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 12, 20, 3), dtype=np.uint8)
    path = str(tmp_path / "x.gif")
    report.write_gif([("high", frames), ("low", frames[:2])], path)
    assert os.path.getsize(path) > 0
