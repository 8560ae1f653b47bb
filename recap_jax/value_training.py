"""Training, evaluating and applying the distributional value function (paper §3.6, Appendix B).

Data: one row per stored decision point (imaged step) of every episode: the image (or a frozen
feature of it), the 32-d state at that step and its return (Eq. (1) by default, computed by
``recap_jax.labeling.batch_returns`` so training and labelling share one definition).

Training (``train_value``): cross-entropy of the 201-bin logits against the discretised return, Adam
3e-4, batch 256, 50 epochs, an episode-level 90/10 split stratified by outcome (seed 42), and the
parameters of the epoch with the best validation cross-entropy are kept. One epoch is one jitted
``lax.scan`` of ``recap_jax.train.make_train_step`` steps over a device-resident dataset.

Backbones (``ValueTrainConfig.backbone``): ``"cnn"`` trains ``models.value_net.SmallCNN`` end to end on
the uint8 images; ``"system2"`` uses the SFT policy's frozen System-2 encoder (``system2_features``,
masked-mean-pooled tokens); ``"resnet50"`` a frozen ImageNet ResNet-50 (``resnet_features``);
``"features"`` any other precomputed features. Frozen features are computed once, before training.

Metrics (``value_metrics``) on the held-out split: step MSE against the naive mean-return baseline,
episode AUC from V̂(o_0), step AUC, Kendall τ-b (with p) between V̂(o_0) and the return at o_0, all with
``recap_jax.stats``; ``plot_calibration`` draws the paper's Fig. 4.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_jax import labeling, stats
from recap_jax import train as T
from recap_jax import value as value_math
from recap_jax.models import value_net

BACKBONES = ("cnn", "system2", "resnet50", "features")


@dataclasses.dataclass(frozen=True)
class ValueTrainConfig:
    """Value-function training settings (defaults: the paper's Appendix B).

    Attributes:
      backbone: "cnn" (end to end), "system2" / "resnet50" / "features" (frozen, precomputed).
      epochs, batch_size, learning_rate: Adam with a constant rate (no warm-up, no clipping).
      val_fraction, split_seed: the episode-level split, stratified by success.
      returns, c_fail, max_steps: the return definition (``labeling.batch_returns``).
      cnn_channels: widths of the ``SmallCNN`` (backbone "cnn").
      target: "nearest" (one-hot on the nearest bin, the paper) or "two_hot".
      seed: initialisation and shuffling seed.
    """

    backbone: str = "cnn"
    epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 3e-4
    val_fraction: float = 0.1
    split_seed: int = 42
    returns: str = "eq1"
    c_fail: float = 0.0
    max_steps: int = 600
    cnn_channels: tuple[int, ...] = (32, 64, 128, 128)
    target: str = "nearest"
    seed: int = 0

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


@dataclasses.dataclass
class ValueData:
    """Decision points of a set of episodes on the host (N rows).

    Attributes:
      episode_ids: int64 [N]; index: int32 [N] decision index within its episode; success: bool [N]
        (the episode's outcome); returns: float32 [N]; states: float32 [N, 32];
      inputs: uint8 [N, H, W, 3] images (backbone "cnn") or float32 [N, F] frozen features.
    """

    episode_ids: np.ndarray
    index: np.ndarray
    success: np.ndarray
    returns: np.ndarray
    states: np.ndarray
    inputs: np.ndarray

    def __len__(self) -> int:
        return int(self.episode_ids.shape[0])

    def select(self, episode_ids: Sequence[int]) -> ValueData:
        keep = np.isin(self.episode_ids, np.asarray(list(episode_ids), np.int64))
        return ValueData(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))

    def with_inputs(self, inputs: np.ndarray) -> ValueData:
        if inputs.shape[0] != len(self):
            raise ValueError(f"inputs have {inputs.shape[0]} rows, the data {len(self)}")
        return dataclasses.replace(self, inputs=inputs)

    def episodes(self) -> tuple[np.ndarray, np.ndarray]:
        """(episode ids int64 [E] in first-seen order, success bool [E])."""
        ids, first = np.unique(self.episode_ids, return_index=True)
        order = np.argsort(first)
        return ids[order], self.success[first[order]]


def decision_points(
    episodes: Sequence, *, returns: str = "eq1", max_steps: int = 600, c_fail: float = 0.0
) -> ValueData:
    """One row per imaged step of each ``Episode``: image, state at that step, return (``labeling.batch_returns``)."""
    if not episodes:
        raise ValueError("no episodes")
    metas = [labeling.EpisodeMeta.of(e) for e in episodes]
    width = max(len(m.image_steps) for m in metas)
    steps = np.zeros((len(metas), width), np.int32)
    mask = np.zeros((len(metas), width), bool)
    for i, m in enumerate(metas):
        steps[i, : len(m.image_steps)] = m.image_steps
        mask[i, : len(m.image_steps)] = True
    ret = labeling.batch_returns(
        steps,
        mask,
        np.array([m.n_steps for m in metas]),
        np.array([m.success for m in metas]),
        kind=returns,
        max_steps=max_steps,
        c_fail=c_fail,
    )
    cols = {k: [] for k in ("episode_ids", "index", "success", "returns", "states", "inputs")}
    for i, (e, m) in enumerate(zip(episodes, metas)):
        q = len(m.image_steps)
        cols["episode_ids"].append(np.full(q, m.episode_id, np.int64))
        cols["index"].append(np.arange(q, dtype=np.int32))
        cols["success"].append(np.full(q, m.success))
        cols["returns"].append(ret[i, :q])
        cols["states"].append(np.asarray(e.states, np.float32)[m.image_steps])
        cols["inputs"].append(np.asarray(e.images, np.uint8))
    return ValueData(**{k: np.concatenate(v) for k, v in cols.items()})


def stratified_split(
    episode_ids: np.ndarray, success: np.ndarray, val_fraction: float = 0.1, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level split stratified by outcome: (train ids, val ids), each sorted.

    Each outcome class contributes round(val_fraction · n_class) episodes (at least one when the class has
    ≥ 2 episodes) to the validation set, chosen by ``np.random.default_rng(seed)``.
    """
    episode_ids, success = np.asarray(episode_ids), np.asarray(success, bool)
    if episode_ids.shape != success.shape or len(np.unique(episode_ids)) != episode_ids.size:
        raise ValueError("need unique episode ids and one outcome per episode")
    rng = np.random.default_rng(seed)
    val = []
    for cls in (True, False):
        ids = np.sort(episode_ids[success == cls])
        k = round(val_fraction * ids.size)
        if ids.size >= 2:
            k = min(max(k, 1), ids.size - 1)
        else:
            k = 0
        val.extend(rng.permutation(ids)[:k].tolist())
    val = np.sort(np.asarray(val, np.int64))
    return np.sort(np.setdiff1d(episode_ids, val)).astype(np.int64), val


# ------------------------------------------------------------------ frozen features


def _batched(fn: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Applies a jitted ``fn`` over ``x`` in fixed-size batches (the last one padded), on the host."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        chunk = x[i : i + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(out)


def resnet_features(model, images: np.ndarray, batch_size: int = 64, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Frozen ResNet features: uint8 [N, H, W, 3] → float32 [N, feature_dim] (resized to ``size``, ImageNet
    normalisation, as the paper's Appendix B)."""
    from recap_jax.models import resnet

    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, x):
        return nnx.merge(graphdef, state).features(resnet.imagenet_preprocess(x, size))

    return _batched(lambda x: f(state, x), images, batch_size).astype(np.float32)


def system2_features(policy_params, images: np.ndarray, prompt: str, batch_size: int = 64) -> np.ndarray:
    """Frozen System-2 features of the SFT policy: uint8 [N, H, W, 3] → float32 [N, C] (pooled tokens)."""
    from recap_jax import policy

    ids, mask = policy.tokenize(policy_params.config, [prompt])

    @jax.jit
    def f(params, x):
        b = x.shape[0]
        feats = policy.pooled_features(params, x, jnp.repeat(ids, b, 0), jnp.repeat(mask, b, 0))
        return jax.lax.stop_gradient(feats)

    return _batched(lambda x: f(policy_params, x), images, batch_size).astype(np.float32)


# ------------------------------------------------------------------ training


def value_loss(params: value_net.ValueParams, batch: dict, key: jax.Array, target: str = "nearest"):
    """Cross-entropy against the discretised return: batch {"inputs", "state" f32[B, 32], "return" f32[B],
    "weight" f32[B]} → (loss f32[], {"value_mae"})."""
    del key
    logits = value_net.value_logits(params, batch["inputs"], batch["state"])
    w = batch["weight"]
    loss = value_math.categorical_loss(logits, batch["return"], weights=w, target=target, reduction="mean")
    mae = jnp.sum(jnp.abs(value_math.expected_value(logits) - batch["return"]) * w) / jnp.maximum(w.sum(), 1.0)
    return loss, {"value_mae": mae}


@dataclasses.dataclass
class ValueTrainResult:
    """The kept (best validation CE) parameters, the split and the per-epoch history."""

    params: value_net.ValueParams
    net_kwargs: dict
    train_ids: np.ndarray
    val_ids: np.ndarray
    best_epoch: int
    history: list[dict]

    def save(self, directory: str) -> None:
        """Writes ``value_params.npz`` (flat NNX state) and ``value_meta.json`` (net kwargs, split, history)."""
        os.makedirs(directory, exist_ok=True)
        flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(self.params.state)}
        np.savez(os.path.join(directory, "value_params.npz"), **flat)
        meta = {
            "net_kwargs": self.net_kwargs,
            "train_ids": self.train_ids.tolist(),
            "val_ids": self.val_ids.tolist(),
            "best_epoch": self.best_epoch,
            "history": self.history,
        }
        with open(os.path.join(directory, "value_meta.json"), "w") as f:
            json.dump(meta, f, indent=1)


def load_value_params(directory: str) -> value_net.ValueParams:
    """Inverse of ``ValueTrainResult.save``: the saved ``ValueParams``."""
    with open(os.path.join(directory, "value_meta.json")) as f:
        kwargs = json.load(f)["net_kwargs"]
    if "cnn_channels" in kwargs:
        kwargs["cnn_channels"] = tuple(kwargs["cnn_channels"])
    params = value_net.init_value_params(jax.random.key(0), **kwargs)
    with np.load(os.path.join(directory, "value_params.npz")) as z:
        saved = {k: z[k] for k in z.files}
    flat = list(nnx.to_flat_state(params.state))
    names = ["/".join(map(str, p)) for p, _ in flat]
    if set(names) != set(saved):
        raise ValueError(f"saved value params do not match the network: {sorted(set(names) ^ set(saved))[:5]}")
    pure = nnx.to_pure_dict(params.state)
    for (path, _), name in zip(flat, names):
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = jnp.asarray(saved[name])
    nnx.replace_by_pure_dict(params.state, pure)
    return params


def _device_data(data: ValueData) -> dict:
    return {
        "inputs": jnp.asarray(data.inputs),
        "state": jnp.asarray(data.states, jnp.float32),
        "return": jnp.asarray(data.returns, jnp.float32),
    }


def _epoch_indices(n: int, batch: int, key: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices int32 [steps, batch] covering all n rows once (shuffled when ``key`` is given) and weights."""
    steps = -(-n // batch)
    order = key.permutation(n) if key is not None else np.arange(n)
    pad = steps * batch - n
    idx = np.concatenate([order, np.zeros(pad, np.int64)]).astype(np.int32)
    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return idx.reshape(steps, batch), w.reshape(steps, batch)


def _net_kwargs(cfg: ValueTrainConfig, data: ValueData) -> dict:
    if cfg.backbone == "cnn":
        if data.inputs.ndim != 4 or data.inputs.dtype != np.uint8:
            raise ValueError(
                f"backbone 'cnn' needs uint8 images [N, H, W, 3], got {data.inputs.dtype}{data.inputs.shape}"
            )
        return {"backbone": "cnn", "cnn_channels": tuple(cfg.cnn_channels)}
    if data.inputs.ndim != 2:
        raise ValueError(
            f"backbone {cfg.backbone!r} needs precomputed features [N, F]; got {data.inputs.shape} "
            "(compute them with system2_features / resnet_features and ValueData.with_inputs)"
        )
    return {"backbone": "features", "feature_dim": int(data.inputs.shape[1])}


def train_value(
    data: ValueData,
    cfg: ValueTrainConfig = ValueTrainConfig(),
    *,
    train_ids: Sequence[int] | None = None,
    val_ids: Sequence[int] | None = None,
    log: Callable[[dict], None] | None = None,
) -> ValueTrainResult:
    """Trains a value function on ``data`` and keeps the epoch with the best validation cross-entropy.

    Args:
      data: ``decision_points(...)``, with frozen features already in ``inputs`` for frozen backbones.
      cfg: settings.
      train_ids / val_ids: an explicit episode split (default: ``stratified_split`` with cfg's fraction/seed).
      log: called with each epoch's metrics dict ({"epoch", "train_loss", "val_loss", "val_mae"}).
    """
    ids, succ = data.episodes()
    if train_ids is None or val_ids is None:
        train_ids, val_ids = stratified_split(ids, succ, cfg.val_fraction, cfg.split_seed)
    train_ids, val_ids = np.asarray(train_ids, np.int64), np.asarray(val_ids, np.int64)
    if np.intersect1d(train_ids, val_ids).size:
        raise ValueError("train and validation episodes overlap")
    tr, va = data.select(train_ids), data.select(val_ids)
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"need training and validation rows, got {len(tr)} and {len(va)}")
    kwargs = _net_kwargs(cfg, data)
    key = jax.random.key(cfg.seed)
    params = value_net.init_value_params(jax.random.fold_in(key, 0), **kwargs)
    opt_cfg = T.OptimizerConfig.value(lr=cfg.learning_rate, warmup_steps=0, clip_norm=None)
    tx = T.make_optimizer(opt_cfg)
    loss_fn = lambda p, b, k: value_loss(p, b, k, cfg.target)
    train_step = T.make_train_step(loss_fn, tx)
    state = T.TrainState.create(params, tx, jax.random.fold_in(key, 1))
    batch = min(cfg.batch_size, len(tr))
    dtr, dva = _device_data(tr), _device_data(va)

    @jax.jit
    def run_epoch(state, data, idx, w):
        def body(state, iw):
            i, wi = iw
            b = jax.tree.map(lambda x: x[i], data) | {"weight": wi}
            state, m = train_step(state, b)
            return state, (m["loss"] * wi.sum(), wi.sum())

        state, (loss, n) = jax.lax.scan(body, state, (idx, w))
        return state, loss.sum() / n.sum()

    @jax.jit
    def eval_epoch(params, data, idx, w):
        def body(_, iw):
            i, wi = iw
            b = jax.tree.map(lambda x: x[i], data) | {"weight": wi}
            loss, m = loss_fn(params, b, None)
            return None, (loss * wi.sum(), m["value_mae"] * wi.sum(), wi.sum())

        _, (loss, mae, n) = jax.lax.scan(body, None, (idx, w))
        return loss.sum() / n.sum(), mae.sum() / n.sum()

    rng = np.random.default_rng(cfg.seed)
    vidx, vw = _epoch_indices(len(va), batch, None)
    best, best_params, best_epoch, history = math.inf, state.params, -1, []
    for epoch in range(cfg.epochs):
        idx, w = _epoch_indices(len(tr), batch, rng)
        state, train_loss = run_epoch(state, dtr, idx, w)
        if int(state.nonfinite_step) >= 0:
            raise T.NonFiniteError(f"non-finite value loss at step {int(state.nonfinite_step)}")
        val_loss, val_mae = (float(x) for x in eval_epoch(state.params, dva, vidx, vw))
        row = {"epoch": epoch, "train_loss": float(train_loss), "val_loss": val_loss, "val_mae": val_mae}
        history.append(row)
        if log is not None:
            log(row)
        if val_loss < best:
            best, best_params, best_epoch = val_loss, state.params, epoch
    return ValueTrainResult(best_params, kwargs, train_ids, val_ids, best_epoch, history)


# ------------------------------------------------------------------ inference, metrics, plots


def predict(params: value_net.ValueParams, inputs: np.ndarray, states: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """V̂ float32 [N] for inputs (images or features) [N, ...] and states float32 [N, 32]."""
    f = jax.jit(value_net.predict_value)
    n = inputs.shape[0]
    batch_size = min(batch_size, n)
    both = np.arange(n)
    return _batched(lambda i: f(params, jnp.asarray(inputs[i]), jnp.asarray(states[i], jnp.float32)), both, batch_size)


def predict_values(params: value_net.ValueParams, data: ValueData, batch_size: int = 256) -> dict[int, np.ndarray]:
    """{episode_id: V̂ float32 [Q]} aligned with each episode's imaged steps (the label stage's input)."""
    v = predict(params, data.inputs, data.states, batch_size)
    out = {}
    for eid in np.unique(data.episode_ids):
        sel = data.episode_ids == eid
        out[int(eid)] = v[sel][np.argsort(data.index[sel])].astype(np.float32)
    return out


def _safe(fn: Callable, *args) -> Any:
    try:
        return fn(*args)
    except ValueError:
        return float("nan")


def value_metrics(values: np.ndarray, data: ValueData, baseline: float) -> dict[str, float]:
    """Held-out metrics of predictions ``values`` float [N] (aligned with ``data``'s rows).

    Returns: {"mse", "naive_mse" (predicting ``baseline``, the training mean return), "episode_auc" (V̂(o_0)
      vs success), "step_auc" (V̂(o_t) vs its episode's success), "kendall_tau", "kendall_p" (V̂(o_0) vs r_0),
      "episodes", "steps"}; a metric that is undefined (one class only) is NaN.
    """
    values = np.asarray(values, np.float64)
    first = data.index == 0
    tau = _safe(stats.kendall_tau, values[first], data.returns[first])
    tau, p = tau if isinstance(tau, tuple) else (tau, float("nan"))
    return {
        "mse": stats.mse(values, data.returns),
        "naive_mse": stats.mse(np.full(len(data), baseline), data.returns),
        "episode_auc": _safe(stats.roc_auc, values[first], data.success[first]),
        "step_auc": _safe(stats.roc_auc, values, data.success),
        "kendall_tau": float(tau),
        "kendall_p": float(p),
        "episodes": int(first.sum()),
        "steps": len(data),
    }


def calibration_episodes(values: np.ndarray, data: ValueData) -> list[dict]:
    """Per-episode {"episode_id", "value" f32[Q], "return" f32[Q], "success"} (``experiments.report`` Fig. 4)."""
    out = []
    for eid in np.unique(data.episode_ids):
        sel = np.flatnonzero(data.episode_ids == eid)
        sel = sel[np.argsort(data.index[sel])]
        out.append(
            {
                "episode_id": int(eid),
                "value": values[sel],
                "return": data.returns[sel],
                "success": bool(data.success[sel[0]]),
            }
        )
    return out


def plot_calibration(values: np.ndarray, data: ValueData, path: str, episode_id: int | None = None) -> int:
    """Fig. 4: V̂(o_t) and the true return along one held-out successful episode (the longest by default).

    Returns the episode id plotted; raises ``ValueError`` if ``data`` has no successful episode.
    """
    eps = calibration_episodes(np.asarray(values), data)
    if episode_id is None:
        good = [e for e in eps if e["success"]]
        if not good:
            raise ValueError("no successful episode to plot")
        ep = max(good, key=lambda e: len(e["value"]))
    else:
        ep = next(e for e in eps if e["episode_id"] == episode_id)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    q = np.arange(len(ep["value"]))
    ax.plot(q, ep["return"], "k--", label="true return $r_t$")
    ax.plot(q, ep["value"], "C0-o", ms=3, label=r"predicted $\hat V(o_t)$")
    ax.set_xlabel("decision point")
    ax.set_ylabel("return")
    ax.set_ylim(-1.05, 0.05)
    ax.set_title(f"Held-out episode {ep['episode_id']} ({'success' if ep['success'] else 'failure'})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return ep["episode_id"]


def evaluate_value(result: ValueTrainResult, data: ValueData, plot_path: str | None = None) -> dict[str, Any]:
    """``value_metrics`` on ``result``'s validation episodes (baseline: the training mean return); optional Fig. 4."""
    va = data.select(result.val_ids)
    v = predict(result.params, va.inputs, va.states)
    baseline = float(data.select(result.train_ids).returns.mean())
    metrics = value_metrics(v, va, baseline)
    if plot_path is not None:
        metrics["calibration_episode"] = _safe(plot_calibration, v, va, plot_path)
    return metrics


def fold_assignment(data: ValueData, folds: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Outcome-stratified folds of ``data``'s episodes: (episode ids int64 [E], fold index int64 [E]).

    Each outcome class is permuted by ``np.random.default_rng(seed)`` and dealt round-robin to the folds, so
    every fold gets ⌊n_class / folds⌋ or ⌈n_class / folds⌉ episodes of each class.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    ids, succ = data.episodes()
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(ids.size, np.int64)
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(succ == cls))
        fold_of[members] = np.arange(members.size) % folds
    return ids, fold_of


def cross_fit_values(
    data: ValueData, cfg: ValueTrainConfig = ValueTrainConfig(), folds: int = 2
) -> tuple[dict[int, np.ndarray], list[ValueTrainResult]]:
    """Cross-fitted V̂: episodes are split in ``folds`` outcome-stratified folds and each fold is predicted by a
    value function trained (with its own stratified train/val split) on the other folds only.

    Returns: ({episode_id: V̂ float32 [Q]} for every episode, the per-fold results).
    """
    ids, fold_of = fold_assignment(data, folds, cfg.split_seed)
    values, results = {}, []
    for k in range(folds):
        held, rest = ids[fold_of == k], ids[fold_of != k]
        sub = data.select(rest)
        res = train_value(sub, cfg)
        results.append(res)
        values.update(predict_values(res.params, data.select(held)))
    return values, results


def cross_validated_metrics(
    data: ValueData, cfg: ValueTrainConfig = ValueTrainConfig(), folds: int = 5
) -> tuple[dict[str, Any], dict[int, np.ndarray], list[ValueTrainResult]]:
    """``value_metrics`` of cross-fitted V̂ over *all* episodes (``cross_fit_values``: each episode is predicted
    by a value function that never saw it), so the episode AUC rests on every episode instead of the ~10 %
    held out by one split. Predictions of the ``folds`` models are pooled; the naive baseline of each row is
    the mean training return of the model that predicted it.

    Returns: (metrics as ``value_metrics`` plus "folds" and "fold_episode_auc" (mean of the per-fold episode
      AUCs, NaN-skipping), the out-of-fold {episode_id: V̂ float32 [Q]}, the per-fold results).
    """
    values, results = cross_fit_values(data, cfg, folds)
    ids, fold_of = fold_assignment(data, folds, cfg.split_seed)
    v = np.zeros(len(data), np.float64)
    naive = np.zeros(len(data), np.float64)
    fold_auc = []
    for k in range(len(results)):
        held = ids[fold_of == k]
        rows = np.isin(data.episode_ids, held)
        baseline = float(data.select(ids[fold_of != k]).returns.mean())
        sub = data.select(held)
        vk = np.zeros(len(sub), np.float64)
        for eid in held:
            sel = sub.episode_ids == eid
            vk[np.flatnonzero(sel)[np.argsort(sub.index[sel])]] = values[int(eid)]
        # data.select keeps row order, so the held rows of ``data`` align with ``sub``'s rows.
        v[rows], naive[rows] = vk, baseline
        fold_auc.append(value_metrics(vk, sub, baseline)["episode_auc"])
    metrics = value_metrics(v, data, 0.0)
    metrics["naive_mse"] = stats.mse(naive, data.returns)
    metrics["folds"] = folds
    metrics["fold_episode_auc"] = float(np.nanmean(fold_auc)) if np.isfinite(fold_auc).any() else float("nan")
    return metrics, values, results


def value_stage(
    episodes: Sequence,
    cfg: ValueTrainConfig,
    out_dir: str,
    *,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    log: Callable[[dict], None] | None = None,
) -> tuple[ValueTrainResult, dict[str, Any], dict[int, np.ndarray]]:
    """Build data → (frozen features) → train → held-out metrics + Fig. 4 → V̂ for every episode; saves to ``out_dir``.

    Args:
      episodes: ``Episode`` records (e.g. ``store.load()``).
      features: for frozen backbones, ``uint8 [N, H, W, 3] → float32 [N, F]`` (e.g.
        ``lambda x: system2_features(policy_params, x, prompt)``); required unless backbone is "cnn".

    Returns: (result, metrics, {episode_id: V̂ [Q]}) — pass the last to ``labeling.label_store``.
    """
    data = decision_points(episodes, returns=cfg.returns, max_steps=cfg.max_steps, c_fail=cfg.c_fail)
    if cfg.backbone != "cnn":
        if features is None:
            raise ValueError(f"backbone {cfg.backbone!r} needs a features function")
        data = data.with_inputs(np.asarray(features(data.inputs), np.float32))
    result = train_value(data, cfg, log=log)
    metrics = evaluate_value(result, data, os.path.join(out_dir, "value_calibration.png"))
    metrics["best_epoch"] = result.best_epoch
    result.save(out_dir)
    with open(os.path.join(out_dir, "value_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return result, metrics, predict_values(result.params, data)


def features_for(cfg: ValueTrainConfig, **models: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The frozen-feature function of a backbone: ``policy_params=`` and ``prompt=`` for "system2",
    ``resnet=`` (a ``models.resnet.ResNet``) for "resnet50"; None for "cnn"."""
    if cfg.backbone == "cnn":
        return None
    if cfg.backbone == "system2":
        return lambda x: system2_features(models["policy_params"], x, models["prompt"])
    if cfg.backbone == "resnet50":
        return lambda x: resnet_features(models["resnet"], x)
    raise ValueError("backbone 'features' takes your own features function")


__all__ = [
    "BACKBONES",
    "ValueData",
    "ValueTrainConfig",
    "ValueTrainResult",
    "calibration_episodes",
    "cross_fit_values",
    "cross_validated_metrics",
    "decision_points",
    "evaluate_value",
    "features_for",
    "fold_assignment",
    "load_value_params",
    "plot_calibration",
    "predict",
    "predict_values",
    "resnet_features",
    "stratified_split",
    "system2_features",
    "train_value",
    "value_loss",
    "value_metrics",
    "value_stage",
]
