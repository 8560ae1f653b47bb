"""Open-loop check of a policy checkpoint against the expert's chunks on stored demo windows.

    python -m experiments.openloop --out DIR [--checkpoint DIR/sft] [--step N] [--store DIR/demos/store]
        [--ids 0,1,2] [--samples 4]

For every window of the chosen episodes (the loader's windows: state and image at an imaged step t,
the bare instruction) the policy samples ``--samples`` chunks; each is compared with the executed
actions ``actions[t : t + H]`` in raw units (radians, metres), per dimension group, over the executed
part (the first Ta actions) and the whole chunk. Two baselines put the numbers in scale: ``hold``
(repeat the last executed action, ``actions[t - 1]``; at t = 0 the first action) and ``mean`` (the
mean expert chunk at the same decision point q over the *other* episodes — a time-indexed open-loop
replay, which knows the phase but not the box's pose).

Prints a table and writes ``openloop.json`` next to the checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

GROUPS = {
    "right_hand": list(range(7, 14)),
    "right_arm": list(range(21, 28)),
    "left_arm_hand": list(range(0, 7)) + list(range(14, 21)),
    "torso_rpy": [28, 29, 30],
    "height": [31],
    "unsupported": [32, 33, 34, 35],
}


def windows(episodes, horizon: int):
    """(episode index, q, t, state f32[32], image u8[H, W, 3], actions f32[H, 36], mask bool[H]): the
    loader's windows (``recap_jax.data.loader.action_window``)."""
    from recap_jax.data.loader import action_window

    for i, ep in enumerate(episodes):
        for q, t in enumerate(ep.image_steps):
            t = int(t)
            acts, mask = action_window(ep.actions, t, horizon)
            yield i, q, t, ep.states[t], ep.images[q], acts, mask


def group_rmse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, upto: int) -> dict[str, float]:
    """RMSE per group over [..., :upto] valid steps. pred/target f32[N, H, 36], mask bool[N, H]."""
    m = mask[:, :upto]
    err = (pred[:, :upto] - target[:, :upto]) ** 2
    out = {}
    for name, dims in GROUPS.items():
        e = err[..., dims].mean(-1)
        out[name] = float(np.sqrt((e * m).sum() / max(m.sum(), 1)))
    return out


def openloop(params, episodes, *, ta: int, samples: int = 4, seed: int = 0, batch: int = 32) -> dict:
    """Policy vs expert vs baselines on every window of ``episodes``; returns per-group RMSEs (raw units)."""
    import jax

    from experiments import glue
    from recap_jax import policy

    cfg = params.config
    h = cfg.chunk
    ws = list(windows(episodes, h))
    if not ws:
        raise ValueError("no windows")
    tok, _ = cfg.tokenizer().encode(glue.INSTRUCTION)
    sample = jax.jit(policy.sample_actions)
    preds = np.zeros((samples, len(ws), h, cfg.action_dim), np.float32)
    for s in range(samples):
        for start in range(0, len(ws), batch):
            part = ws[start : start + batch]
            b = len(part)
            pad = batch - b
            st = np.stack([w[3] for w in part] + [part[-1][3]] * pad)
            im = np.stack([w[4] for w in part] + [part[-1][4]] * pad)
            t = np.array([w[2] for w in part] + [part[-1][2]] * pad, np.int32)
            ids = np.repeat(tok, batch, 0)
            key = jax.random.fold_in(jax.random.key(seed), s * 100_000 + start)
            out = sample(params, {"state": st, "image": im, "t": t}, ids, key)
            preds[s, start : start + b] = np.asarray(out)[:b]
    target = np.stack([w[5] for w in ws])
    mask = np.stack([w[6] for w in ws])
    ep_idx = np.array([w[0] for w in ws])
    q_idx = np.array([w[1] for w in ws])
    hold = np.stack([np.repeat(episodes[w[0]].actions[max(w[2] - 1, 0)][None], h, 0) for w in ws])
    mean = np.zeros_like(target)
    for j, (i, q) in enumerate(zip(ep_idx, q_idx)):
        others = [k for k in range(len(ws)) if q_idx[k] == q and ep_idx[k] != i]
        mean[j] = target[others].mean(0) if others else target[j]
    res = {"windows": len(ws), "episodes": len(episodes), "samples": samples}
    # every sample against its window's target: [samples * N, H, 36]
    all_preds = preds.reshape(-1, h, cfg.action_dim)
    all_target, all_mask = np.tile(target, (samples, 1, 1)), np.tile(mask, (samples, 1))
    for upto, tag in ((ta, "exec"), (h, "chunk")):
        res[f"policy_{tag}"] = group_rmse(all_preds, all_target, all_mask, upto)
        res[f"hold_{tag}"] = group_rmse(hold, target, mask, upto)
        res[f"mean_{tag}"] = group_rmse(mean, target, mask, upto)
    # spread between samples (policy stochasticity) and error of the first action alone
    res["policy_sample_std_exec"] = {n: float(preds[:, :, :ta][..., d].std(0).mean()) for n, d in GROUPS.items()}
    res["policy_first_action"] = group_rmse(all_preds, all_target, all_mask, 1)
    per_q = {}
    for q in np.unique(q_idx):
        sel = q_idx == q
        per_q[int(q)] = group_rmse(
            preds[:, sel].reshape(-1, h, cfg.action_dim),
            np.tile(target[sel], (samples, 1, 1)),
            np.tile(mask[sel], (samples, 1)),
            ta,
        )
    res["policy_exec_per_q"] = per_q
    return res


def format_table(res: dict) -> str:
    rows = ["| estimate | " + " | ".join(GROUPS) + " |", "|---|" + "---:|" * len(GROUPS)]
    for key in ("policy_first_action", "policy_exec", "hold_exec", "mean_exec", "policy_chunk", "mean_chunk"):
        rows.append(f"| {key} | " + " | ".join(f"{res[key][g]:.4f}" for g in GROUPS) + " |")
    rows.append(
        "| policy sample std (exec) | " + " | ".join(f"{res['policy_sample_std_exec'][g]:.4f}" for g in GROUPS) + " |"
    )
    return "\n".join(rows)


def main(argv=None) -> None:
    from experiments import common, glue
    from recap_jax.data import EpisodeStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run directory (its config.json names the preset)")
    p.add_argument("--checkpoint", default=None, help="policy run dir (default OUT/sft)")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--store", default=None, help="episode store (default OUT/demos/store)")
    p.add_argument("--ids", default=None, help="comma-separated episode ids (default: all)")
    p.add_argument("--samples", type=int, default=4)
    a = p.parse_args(argv)
    out = Path(a.out)
    cfg = common.load_or_init_config(out, None)
    ckpt = Path(a.checkpoint) if a.checkpoint else out / "sft"
    params = glue.load_policy(ckpt, glue.policy_config(cfg), step=a.step)
    store = EpisodeStore(Path(a.store) if a.store else out / "demos" / "store")
    eps = sorted(store.load(), key=lambda e: e.episode_id)
    if a.ids:
        want = {int(x) for x in a.ids.split(",")}
        eps = [e for e in eps if e.episode_id in want]
    res = openloop(params, eps, ta=cfg.env.replan_every, samples=a.samples)
    res["checkpoint"], res["step"], res["episode_ids"] = str(ckpt), a.step, [e.episode_id for e in eps]
    print(format_table(res))
    common.atomic_write_json(ckpt / f"openloop_{a.step or 'latest'}.json", res)


if __name__ == "__main__":
    main()
