"""Results of a RECAP-Ψ study: ``results.json``, the paper's Table 1 in Markdown, figures, a GIF.

Everything here is computed from per-condition, per-episode outcome arrays (``Outcomes``) with the
statistics of ``recap_jax.stats``: Wilson 95% intervals for each success rate, a pooled
two-proportion z-test and a Wald 95% interval for each difference, and, for paired conditions (every
condition is evaluated on the same held-out reset keys, so episode ``i`` of two conditions starts
from the same state), Newcombe's paired score interval (``paired_ci_low``/``paired_ci_high``, the
interval Table 1 prints) and McNemar's exact binomial test on the discordant episodes.

Figures follow the paper: Fig. 2 (success rates with Wilson CIs), Fig. 4 (value-function
calibration on a held-out episode), Fig. 6 (difference CIs of the two controlled comparisons).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recap_jax import stats

CONDITIONS = ("sft_init", "sft_final", "bc_all", "recap_low", "recap_high")
# name -> (treatment, control): the two confound-controlled comparisons of the paper.
COMPARISONS = {"high_vs_low": ("recap_high", "recap_low"), "recap_vs_bc": ("recap_high", "bc_all")}
CONTEXT_CONDITIONS = ("sft_init", "sft_final")  # reported for context, grey in Fig. 2


@dataclass(frozen=True)
class Outcomes:
    """Per-episode closed-loop outcomes of one condition, in held-out reset-key order.

    Attributes:
      success: bool [N].
      steps: int [N] control steps taken (to success, or to the episode limit / termination).
      fell: bool [N] the robot fell (a failure mode); all False when unknown.
    """

    success: np.ndarray
    steps: np.ndarray
    fell: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        success = np.asarray(self.success, dtype=bool).reshape(-1)
        steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        fell = np.zeros_like(success) if self.fell is None else np.asarray(self.fell, dtype=bool).reshape(-1)
        if not success.shape == steps.shape == fell.shape:
            raise ValueError(f"shape mismatch: success {success.shape}, steps {steps.shape}, fell {fell.shape}")
        object.__setattr__(self, "success", success)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "fell", fell)

    @property
    def episodes(self) -> int:
        return int(self.success.shape[0])

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, success=self.success, steps=self.steps, fell=self.fell)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Outcomes:
        with np.load(path) as z:
            return cls(success=z["success"], steps=z["steps"], fell=z["fell"])


def _pair(x: Any) -> tuple[float, float]:
    lo, hi = x
    return float(lo), float(hi)


def rate_summary(successes: float, episodes: int) -> dict[str, float]:
    """Rate and Wilson 95% interval from a count (fractions in [0, 1])."""
    lo, hi = _pair(stats.wilson_interval(successes, episodes))
    return {
        "successes": successes,
        "episodes": int(episodes),
        "rate": successes / episodes,
        "ci_low": lo,
        "ci_high": hi,
    }


def condition_summary(o: Outcomes, episode_limit: int | None = None) -> dict[str, Any]:
    """One ``conditions`` entry of results.json."""
    out: dict[str, Any] = rate_summary(int(o.success.sum()), o.episodes)
    out["mean_steps_to_success"] = float(o.steps[o.success].mean()) if o.success.any() else None
    failed = ~o.success
    fell = failed & o.fell
    timeout = failed & ~o.fell
    if episode_limit is not None:
        timeout = timeout & (o.steps >= episode_limit)
    out["failures"] = {
        "total": int(failed.sum()),
        "fell": int(fell.sum()),
        "timeout": int(timeout.sum()),
        "other": int((failed & ~fell & ~timeout).sum()),
    }
    return out


def compare_counts(s1: float, n1: int, s2: float, n2: int) -> dict[str, float]:
    """Difference of two success rates (1 minus 2): Wald 95% interval and pooled two-proportion z-test."""
    diff, lo, hi = (float(v) for v in stats.difference_interval(s1, n1, s2, n2))
    z, p = (float(v) for v in stats.two_proportion_ztest(s1, n1, s2, n2))
    return {"diff": diff, "diff_ci_low": lo, "diff_ci_high": hi, "z": z, "p": p}


def compare(treatment: Outcomes, control: Outcomes) -> dict[str, Any]:
    """One ``comparisons`` entry: the unpaired statistics, plus (same episode count, so paired) Newcombe's
    paired 95% interval and McNemar's exact test; ``None`` for those when the conditions are unpaired."""
    out: dict[str, Any] = compare_counts(
        int(treatment.success.sum()), treatment.episodes, int(control.success.sum()), control.episodes
    )
    out["paired_ci_low"] = out["paired_ci_high"] = out["mcnemar_p"] = None
    if treatment.episodes == control.episodes:
        _, lo, hi = stats.paired_difference_interval(treatment.success, control.success)
        out["paired_ci_low"], out["paired_ci_high"] = float(lo), float(hi)
        out["mcnemar_p"] = float(stats.mcnemar_test(treatment.success, control.success).p_value)
    return out


def build_results(
    *,
    preset: str,
    seed: int,
    provenance: Mapping[str, Any],
    outcomes: Mapping[str, Outcomes],
    value_function: Mapping[str, Any] | None,
    rollouts: Mapping[str, Any] | None,
    seconds: Mapping[str, float],
    episode_limit: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assembles results.json from the per-condition outcome arrays and the other stages' summaries."""
    missing = [c for c in CONDITIONS if c not in outcomes]
    if missing:
        raise ValueError(f"results need every condition; missing {missing}")
    results: dict[str, Any] = {
        "preset": preset,
        "seed": int(seed),
        "provenance": dict(provenance),
        "conditions": {c: condition_summary(outcomes[c], episode_limit) for c in CONDITIONS},
        "comparisons": {name: compare(outcomes[t], outcomes[c]) for name, (t, c) in COMPARISONS.items()},
        "value_function": dict(value_function or {}),
        "rollouts": dict(rollouts or {}),
        "seconds": {k: round(float(v), 2) for k, v in seconds.items()},
    }
    if extra:
        results.update(extra)
    return _finite_or_none(results)


def _finite_or_none(x: Any) -> Any:
    """Non-finite floats (an undefined AUC, say) become None so results.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# ---- Table 1 ------------------------------------------------------------------------------------

DEFAULT_LABELS = {
    "sft_init": ("SFT@init (rollout init)", "expert demos"),
    "sft_final": ("SFT@final (context)", "expert demos"),
    "bc_all": ("BC-all", "rollouts, no token"),
    "recap_low": ("RECAP-low", "rollouts + token"),
    "recap_high": ("**RECAP-high**", "rollouts + token"),
}


def table_labels(sft_init_step: int, sft_final_step: int, num_demos: int, num_rollouts: int) -> dict:
    """Row labels in the paper's wording, with this study's step counts and data sizes."""

    def k(n: int) -> str:
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)

    return {
        "sft_init": (f"SFT@{k(sft_init_step)} (rollout init)", f"{num_demos} expert demos"),
        "sft_final": (f"SFT@{k(sft_final_step)} (context)", f"{num_demos} expert demos"),
        "bc_all": ("BC-all", f"{num_rollouts} rollouts, no token"),
        "recap_low": ("RECAP-low", f"{num_rollouts} rollouts + token"),
        "recap_high": ("**RECAP-high**", f"{num_rollouts} rollouts + token"),
    }


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def table1_markdown(results: Mapping[str, Any], labels: Mapping[str, tuple[str, str]] | None = None) -> str:
    """The paper's Table 1 (success rate with Wilson 95% CI, percent) plus the two comparisons."""
    labels = labels or DEFAULT_LABELS
    lines = [
        "| Method | Training data | N | Success Rate | 95% CI |",
        "|---|---|---:|---:|---|",
    ]
    for c in CONDITIONS:
        row = results["conditions"][c]
        name, data = labels[c]
        rate = f"{_pct(row['rate'])}%"
        if name.startswith("**"):
            rate = f"**{rate}**"
        lines.append(
            f"| {name} | {data} | {row['episodes']} | {rate} | [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}] |"
        )
    lines += [
        "",
        "| Comparison | Δ (pts) | 95% CI (pts) | z | p | McNemar p |",
        "|---|---:|---|---:|---:|---:|",
    ]
    names = {"high_vs_low": "RECAP-high vs RECAP-low", "recap_vs_bc": "RECAP-high vs BC-all"}
    for key, cmp in results["comparisons"].items():
        mc = "n/a" if cmp.get("mcnemar_p") is None else f"{_fmt_p(cmp['mcnemar_p'])} (exact)"
        if cmp.get("paired_ci_low") is not None:  # paired episodes: Newcombe's interval
            ci = f"[{_pct(cmp['paired_ci_low'])}, {_pct(cmp['paired_ci_high'])}] (paired)"
        else:
            ci = f"[{_pct(cmp['diff_ci_low'])}, {_pct(cmp['diff_ci_high'])}] (Wald)"
        lines.append(
            f"| {names.get(key, key)} | {100 * cmp['diff']:+.1f} | {ci} | {cmp['z']:.2f} | {_fmt_p(cmp['p'])} | {mc} |"
        )
    vf = results.get("value_function") or {}
    if vf:
        keys = ("mse", "naive_mse", "clock_only_mse", "episode_auc", "step_auc", "within_bin_step_auc", "kendall_tau")
        parts = [f"{k} {vf[k]:.3f}" for k in keys if _num(vf.get(k))]
        if _num(vf.get("high_label_failed_fraction")):
            parts.append(f"high labels in failed episodes {100 * vf['high_label_failed_fraction']:.1f}%")
        goal = vf.get("goal")
        if isinstance(goal, dict) and "met" in goal:
            parts.append("credit-assignment goal " + ("met" if goal["met"] else "not met"))
        if parts:
            where = "out of fold, all episodes" if vf.get("labels_out_of_fold") else "held-out split"
            lines += ["", f"Value function ({where}): " + ", ".join(parts)]
    return "\n".join(lines) + "\n"


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt_p(p: float) -> str:
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


# ---- figures ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success_rates(results: Mapping[str, Any], path: str, labels: Mapping | None = None) -> None:
    """Fig. 2: success rate per condition with Wilson 95% CIs (context conditions in grey)."""
    plt = _plt()
    labels = labels or DEFAULT_LABELS
    conds = [c for c in ("sft_init", "sft_final", "bc_all", "recap_low", "recap_high") if c in results["conditions"]]
    rates = np.array([results["conditions"][c]["rate"] for c in conds]) * 100
    lo = np.array([results["conditions"][c]["ci_low"] for c in conds]) * 100
    hi = np.array([results["conditions"][c]["ci_high"] for c in conds]) * 100
    colors = ["0.65" if c in CONTEXT_CONDITIONS else ("tab:blue" if c == "recap_high" else "tab:cyan") for c in conds]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(conds))
    ax.bar(x, rates, color=colors, yerr=[rates - lo, hi - rates], capsize=4)
    ax.set_xticks(x, [labels[c][0].replace("**", "") for c in conds], rotation=15, fontsize=8)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, max(100.0, float(hi.max()) + 5))
    ax.set_title(f"BendPick success (Wilson 95% CI), preset {results.get('preset', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_differences(results: Mapping[str, Any], path: str) -> None:
    """Fig. 6: the controlled effects as differences in success rate (points) with 95% CIs (paired, when
    the comparison has a paired interval; Wald otherwise)."""
    plt = _plt()
    names = {
        "high_vs_low": "RECAP-high − RECAP-low\n(within model)",
        "recap_vs_bc": "RECAP-high − BC-all\n(matched data)",
    }
    keys = list(results["comparisons"])
    fig, ax = plt.subplots(figsize=(6, 2.6))
    for i, k in enumerate(keys):
        cmp = results["comparisons"][k]
        paired = cmp.get("paired_ci_low") is not None
        lo_k, hi_k = ("paired_ci_low", "paired_ci_high") if paired else ("diff_ci_low", "diff_ci_high")
        d, lo, hi = 100 * cmp["diff"], 100 * cmp[lo_k], 100 * cmp[hi_k]
        ax.errorbar([d], [i], xerr=[[d - lo], [hi - d]], fmt="o", capsize=5, color="tab:blue")
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(keys)), [names.get(k, k) for k in keys], fontsize=8)
    ax.set_ylim(-0.7, len(keys) - 0.3)
    ax.set_xlabel("difference in success rate (percentage points), 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_value_calibration(episodes: Sequence[Mapping[str, Any]], path: str) -> None:
    """Fig. 4: predicted V̂(o_t) vs the true return along held-out episodes.

    Args:
      episodes: dicts with ``"value"`` f32[Q], ``"return"`` f32[Q], ``"success"`` bool and optional
        ``"episode_id"``, ``"steps"`` i32[Q] (x axis; decision-point index when absent).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, ep in enumerate(episodes):
        v, r = np.asarray(ep["value"]), np.asarray(ep["return"])
        x = np.asarray(ep.get("steps", np.arange(len(v))))
        tag = f"ep {ep.get('episode_id', i)} ({'success' if ep['success'] else 'failure'})"
        (line,) = ax.plot(x, v, "-o", ms=3, label=f"V̂ {tag}")
        ax.plot(x, r, "--", color=line.get_color(), label=f"return {tag}")
    ax.set_xlabel("control step" if episodes and "steps" in episodes[0] else "decision point")
    ax.set_ylabel("normalised return")
    ax.set_ylim(-1.05, 0.05)
    ax.legend(fontsize=7)
    ax.set_title("Value-function calibration (held-out episodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label_frame(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    ImageDraw.Draw(img).text((2, 1), text, fill=(255, 255, 0))
    return np.asarray(img)


def write_gif(columns: Sequence[tuple[str, np.ndarray]], path: str, fps: int = 4, scale: int = 2) -> None:
    """Side-by-side GIF of egocentric image sequences.

    Args:
      columns: (caption, u8[Q_i, H, W, 3]) per episode; shorter sequences hold their last frame.
    """
    import imageio.v2 as imageio

    if not columns:
        raise ValueError("write_gif needs at least one episode")
    q = max(len(frames) for _, frames in columns)
    out = []
    for t in range(q):
        tiles = []
        for caption, frames in columns:
            f = np.asarray(frames[min(t, len(frames) - 1)], dtype=np.uint8)
            f = np.repeat(np.repeat(f, scale, axis=0), scale, axis=1)
            tiles.append(_label_frame(f, caption))
        h = max(t_.shape[0] for t_ in tiles)
        tiles = [np.pad(t_, ((0, h - t_.shape[0]), (0, 2), (0, 0))) for t_ in tiles]
        out.append(np.concatenate(tiles, axis=1))
    imageio.mimsave(path, out, duration=1.0 / fps, loop=0)


def write_report(
    results: Mapping[str, Any], out_dir: str, labels: Mapping | None = None, calibration: Sequence | None = None
) -> str:
    """Writes results.json, table1.md and the figures into ``out_dir``; returns the Markdown table."""
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(_finite_or_none(results), f, indent=2, default=_json_default, allow_nan=False)
    os.replace(tmp, os.path.join(out_dir, "results.json"))
    table = table1_markdown(results, labels)
    with open(os.path.join(out_dir, "table1.md"), "w") as f:
        f.write(table)
    plot_success_rates(results, os.path.join(out_dir, "fig2_success_rates.png"), labels)
    plot_differences(results, os.path.join(out_dir, "fig6_differences.png"))
    if calibration:
        plot_value_calibration(calibration, os.path.join(out_dir, "fig4_value_calibration.png"))
    return table


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
