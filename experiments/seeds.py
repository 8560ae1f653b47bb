"""Several seeds of the whole study, with the across-seed spread.

    python -m experiments.seeds --preset smoke --out runs/smoke_seeds --seeds 0 1 2

Runs (or resumes) ``recap_bendpick`` once per seed in ``DIR/seed<k>/`` and writes ``DIR/seeds.json``:
per condition and comparison the per-seed values, their mean and sample standard deviation, and the
pooled rate with its Wilson interval (all seeds' episodes together), and for each comparison the pooled
exact McNemar test over seeds (``stats.pooled_mcnemar``: the discordant episodes of every seed summed,
the Mantel–Haenszel test for matched pairs), plus ``DIR/seeds.md``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from experiments import common, evaluate, recap_bendpick, report
from recap_jax import stats


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    out: parent directory (one run directory per seed below it).
    preset: a preset name (smoke | demo | cpu | cpu_long | cpu_power | cpu_power_mixed | gpu | paper | psi0).
    seeds: study seeds.
    """

    out: Path
    preset: str = "smoke"
    seeds: tuple[int, ...] = (0, 1, 2)


def spread(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    return {
        "values": [float(x) for x in v],
        "mean": float(v.mean()) if v.size else None,
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
    }


def aggregate(per_seed: dict[int, dict], outcomes: dict[int, dict[str, report.Outcomes]] | None = None) -> dict:
    """Across-seed summary of per-seed ``results.json`` dicts; with ``outcomes`` (seed -> condition ->
    paired per-episode ``Outcomes``) each comparison also gets ``pooled_mcnemar`` {p, n10, n01}
    (n10: episodes the treatment solved and the control did not, summed over seeds)."""
    out: dict = {"seeds": sorted(per_seed), "conditions": {}, "comparisons": {}}
    for cond in report.CONDITIONS:
        rows = [per_seed[s]["conditions"][cond] for s in sorted(per_seed)]
        k, n = sum(r["successes"] for r in rows), sum(r["episodes"] for r in rows)
        out["conditions"][cond] = {"rate": spread([r["rate"] for r in rows]), "pooled": report.rate_summary(k, n)}
    for name in report.COMPARISONS:
        rows = [per_seed[s]["comparisons"][name] for s in sorted(per_seed)]
        out["comparisons"][name] = {"diff": spread([r["diff"] for r in rows])}
        if outcomes is not None:
            treat, ctrl = report.COMPARISONS[name]
            pairs = [(outcomes[s][treat].success, outcomes[s][ctrl].success) for s in sorted(per_seed)]
            p, n10, n01 = stats.pooled_mcnemar(pairs)
            out["comparisons"][name]["pooled_mcnemar"] = {"p": p, "n10": n10, "n01": n01}
    return out


def markdown(agg: dict) -> str:
    def pm(s):
        if s["mean"] is None:
            return "n/a"
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if s["std"] is not None else f"{100 * s['mean']:.1f}"

    lines = [f"Seeds: {agg['seeds']}", "", "| Condition | mean ± sd (%) | pooled (%) [95% CI] |", "|---|---:|---|"]
    for cond, row in agg["conditions"].items():
        p = row["pooled"]
        ci = f"[{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]"
        lines.append(f"| {cond} | {pm(row['rate'])} | {100 * p['rate']:.1f} {ci} |")
    lines += ["", "| Comparison | Δ mean ± sd (pts) | pooled McNemar p (exact) [n10 vs n01] |", "|---|---:|---|"]
    for name, row in agg["comparisons"].items():
        mc = row.get("pooled_mcnemar")
        mcs = "n/a" if mc is None else f"{mc['p']:.3g} [{mc['n10']} vs {mc['n01']}]"
        lines.append(f"| {name} | {pm(row['diff'])} | {mcs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import tyro

    args = tyro.cli(Args, args=argv, description="The RECAP-Ψ study over several seeds, with the spread.")
    common.setup_jax()
    per_seed, outcomes = {}, {}
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        cfg = recap_bendpick.configure(recap_bendpick.Args(out=out, preset=args.preset, seed=seed))
        results = recap_bendpick.run_study(cfg, out)
        recap_bendpick.write_outputs(cfg, out, results)
        per_seed[seed] = results
        outcomes[seed] = evaluate.load_outcomes(out, cfg.iterations - 1)  # the final iteration, as results
    agg = aggregate(per_seed, outcomes)
    common.atomic_write_json(Path(args.out) / "seeds.json", agg)
    table = markdown(agg)
    (Path(args.out) / "seeds.md").write_text(table)
    print(table)
    return agg


if __name__ == "__main__":
    main()
