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
``"features"`` any other precomputed features; ``"state"`` no image at all (a constant 1-d feature: the
network reads the 32-d state, and the clock when ``clock_steps`` > 0). Frozen features are computed once,
before training.

Metrics (``value_metrics``) on the held-out split: step MSE against the naive mean-return baseline,
episode AUC from V̂(o_0), step AUC, Kendall τ-b (with p) between V̂(o_0) and the return at o_0, all with
``recap_jax.stats``; ``plot_calibration`` draws the paper's Fig. 4.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_jax import labeling, stats
from recap_jax import train as T
from recap_jax import value as value_math
from recap_jax.models import value_net

BACKBONES = ("cnn", "system2", "resnet50", "features", "state")


@dataclasses.dataclass(frozen=True)
class ValueTrainConfig:
    """Value-function training settings (defaults: the paper's Appendix B).

    Attributes:
      backbone: "cnn" (end to end), "system2" / "resnet50" / "features" (frozen, precomputed), "state" (no
        image: state and clock only).
      epochs, batch_size, learning_rate: Adam with a constant rate (no warm-up, no clipping).
      val_fraction, split_seed: the episode-level split, stratified by success.
      returns, c_fail, max_steps: the return definition (``labeling.batch_returns``; ``max_steps`` is the T
        of the normaliser T − 1, the paper's 600 whatever the episode limit).
      v_min, v_max: the range of the value bins (``labeling.return_range`` of the return definition).
      cnn_channels: widths of the ``SmallCNN`` (backbone "cnn").
      target: "nearest" (one-hot on the nearest bin, the paper) or "two_hot".
      seed: initialisation and shuffling seed.
      clock_steps: 0 (the paper) or > 0: the network also reads the decision point's control step (its
        phase t / clock_steps, ``models.value_net``), a deviation the study records.
      folds: 0 or 1: one stratified train/validation split (the paper). k ≥ 2: k outcome-stratified folds
        (``cross_fit``): every episode's V̂ comes from the model that did not train on it, and the epoch
        kept for fold k is the one with the lowest validation MSE pooled over the *other* folds' held-out
        episodes.
      min_steps: train at least this many Adam steps (the number of epochs grows to reach it; the paper's
        50 epochs × 500 episodes × 25 points / batch 256 ≈ 2,400).
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
    v_min: float = value_math.V_MIN
    v_max: float = value_math.V_MAX
    clock_steps: int = 0
    folds: int = 0
    min_steps: int = 0

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.target not in value_math.TARGET_KINDS:
            raise ValueError(f"target must be one of {value_math.TARGET_KINDS}, got {self.target!r}")
        if self.clock_steps < 0 or self.folds < 0 or self.min_steps < 0:
            raise ValueError("clock_steps, folds and min_steps must be >= 0")
        if not self.v_min < self.v_max:
            raise ValueError(f"need v_min < v_max, got {self.v_min}, {self.v_max}")
        if self.returns not in labeling.RETURN_KINDS:
            raise ValueError(f"returns must be one of {labeling.RETURN_KINDS}, got {self.returns!r}")

    def epochs_for(self, train_rows: int) -> int:
        """Epochs to run over ``train_rows`` rows: ``epochs``, or more to reach ``min_steps`` Adam steps."""
        per_epoch = -(-max(int(train_rows), 1) // self.batch_size)
        return max(self.epochs, -(-self.min_steps // per_epoch))


@dataclasses.dataclass
class ValueData:
    """Decision points of a set of episodes on the host (N rows).

    Attributes:
      episode_ids: int64 [N]; index: int32 [N] decision index within its episode; success: bool [N]
        (the episode's outcome); returns: float32 [N]; states: float32 [N, 32];
      inputs: uint8 [N, H, W, 3] images (backbone "cnn") or float32 [N, F] frozen features;
      steps: int32 [N] control step of the decision point (the episode clock).
    """

    episode_ids: np.ndarray
    index: np.ndarray
    success: np.ndarray
    returns: np.ndarray
    states: np.ndarray
    inputs: np.ndarray
    steps: np.ndarray

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
    cols = {k: [] for k in ("episode_ids", "index", "success", "returns", "states", "inputs", "steps")}
    for i, (e, m) in enumerate(zip(episodes, metas)):
        q = len(m.image_steps)
        cols["episode_ids"].append(np.full(q, m.episode_id, np.int64))
        cols["index"].append(np.arange(q, dtype=np.int32))
        cols["success"].append(np.full(q, m.success))
        cols["returns"].append(ret[i, :q])
        cols["states"].append(np.asarray(e.states, np.float32)[m.image_steps])
        cols["inputs"].append(np.asarray(e.images, np.uint8))
        cols["steps"].append(np.asarray(m.image_steps, np.int32))
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
    """Cross-entropy against the discretised return on the network's bins: batch {"inputs", "state" f32[B, 32],
    "return" f32[B], "weight" f32[B], and "step" i32[B] for a network with the clock} → (loss f32[],
    {"value_mae"})."""
    del key
    logits = value_net.value_logits(params, batch["inputs"], batch["state"], batch.get("step"))
    sup = value_net.support(params)
    w = batch["weight"]
    loss = value_math.categorical_loss(logits, batch["return"], *sup, weights=w, target=target, reduction="mean")
    v = value_math.expected_value(logits, *sup)
    mae = jnp.sum(jnp.abs(v - batch["return"]) * w) / jnp.maximum(w.sum(), 1.0)
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


def _device_data(data: ValueData, rows: int | None = None) -> dict:
    """The rows on the device, padded to ``rows`` (repeating the last row; the padding gets weight 0), so that
    folds of different sizes share one compiled program."""
    pad = 0 if rows is None else rows - len(data)
    if pad < 0:
        raise ValueError(f"cannot pad {len(data)} rows to {rows}")

    def put(x, dtype=None):
        x = np.asarray(x) if dtype is None else np.asarray(x, dtype)
        return jnp.asarray(np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x)

    return {
        "inputs": put(data.inputs),
        "state": put(data.states, np.float32),
        "return": put(data.returns, np.float32),
        "step": put(data.steps, np.int32),
    }


def _epoch_indices(
    n: int, batch: int, key: np.random.Generator | None, steps: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices int32 [steps, batch] covering all n rows once (shuffled when ``key`` is given) and weights.

    ``steps`` (default ⌈n / batch⌉, at least that): the n rows are dealt into ``steps`` batches of ⌊n / steps⌋ or
    ⌈n / steps⌉ real rows each, the rest of every batch padding with weight 0, so no step is empty.
    """
    need = -(-n // batch)
    steps = need if steps is None else steps
    if steps < need:
        raise ValueError(f"{n} rows need at least {need} steps of {batch}, got {steps}")
    order = key.permutation(n) if key is not None else np.arange(n)
    idx = np.zeros((steps, batch), np.int32)
    w = np.zeros((steps, batch), np.float32)
    bounds = np.linspace(0, n, steps + 1).round().astype(np.int64)
    for s in range(steps):
        k = bounds[s + 1] - bounds[s]
        idx[s, :k] = order[bounds[s] : bounds[s + 1]]
        w[s, :k] = 1.0
    return idx, w


def _net_kwargs(cfg: ValueTrainConfig, data: ValueData) -> dict:
    common = {"clock_steps": int(cfg.clock_steps), "v_min": float(cfg.v_min), "v_max": float(cfg.v_max)}
    return _backbone_kwargs(cfg, data) | common


def _backbone_kwargs(cfg: ValueTrainConfig, data: ValueData) -> dict:
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


class _Trainer:
    """The jitted epoch programs of one value configuration (train epoch, held-out prediction)."""

    def __init__(self, cfg: ValueTrainConfig, kwargs: dict, n_train: int):
        self.cfg, self.kwargs = cfg, kwargs
        self.tx = T.make_optimizer(T.OptimizerConfig.value(lr=cfg.learning_rate, warmup_steps=0, clip_norm=None))
        self.loss_fn = lambda p, b, k: value_loss(p, b, k, cfg.target)
        train_step = T.make_train_step(self.loss_fn, self.tx)
        self.batch = min(cfg.batch_size, n_train)
        loss_fn = self.loss_fn

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
            """(mean CE, V̂ float32 [steps, batch]) over fixed batches."""

            def body(_, iw):
                i, wi = iw
                b = jax.tree.map(lambda x: x[i], data) | {"weight": wi}
                loss, _ = loss_fn(params, b, None)
                v = value_net.predict_value(params, b["inputs"], b["state"], b["step"])
                return None, (loss * wi.sum(), wi.sum(), v)

            _, (loss, n, v) = jax.lax.scan(body, None, (idx, w))
            return loss.sum() / n.sum(), v

        self.run_epoch, self.eval_epoch = run_epoch, eval_epoch

    def init(self, key: jax.Array):
        params = value_net.init_value_params(jax.random.fold_in(key, 0), **self.kwargs)
        return T.TrainState.create(params, self.tx, jax.random.fold_in(key, 1))

    def epoch(self, state, dtr: dict, n: int, rng: np.random.Generator, steps: int | None = None):
        idx, w = _epoch_indices(n, self.batch, rng, steps)
        state, loss = self.run_epoch(state, dtr, idx, w)
        if int(state.nonfinite_step) >= 0:
            raise T.NonFiniteError(f"non-finite value loss at step {int(state.nonfinite_step)}")
        return state, float(loss)

    def evaluate(self, params, dva: dict, n: int, steps: int | None = None) -> tuple[float, np.ndarray]:
        """(mean cross-entropy, V̂ float32 [n]) of ``params`` on the first n rows of ``dva``."""
        idx, w = _epoch_indices(n, self.batch, None, steps)
        loss, v = self.eval_epoch(params, dva, idx, w)
        return float(loss), np.asarray(v).reshape(-1)[np.flatnonzero(w.reshape(-1))]


def train_value(
    data: ValueData,
    cfg: ValueTrainConfig = ValueTrainConfig(),
    *,
    train_ids: Sequence[int] | None = None,
    val_ids: Sequence[int] | None = None,
    log: Callable[[dict], None] | None = None,
) -> ValueTrainResult:
    """Trains a value function on ``data`` and keeps the epoch with the best validation MSE of V̂.

    Args:
      data: ``decision_points(...)``, with frozen features already in ``inputs`` for frozen backbones.
      cfg: settings (``cfg.epochs_for`` epochs; ``cfg.folds`` is not used here, see ``cross_fit``).
      train_ids / val_ids: an explicit episode split (default: ``stratified_split`` with cfg's fraction/seed).
      log: called with each epoch's metrics dict ({"epoch", "train_loss", "val_loss", "val_mae", "val_mse"}).
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
    trainer = _Trainer(cfg, kwargs, len(tr))
    state = trainer.init(jax.random.key(cfg.seed))
    dtr, dva = _device_data(tr), _device_data(va)
    rng = np.random.default_rng(cfg.seed)
    best, best_params, best_epoch, history = math.inf, state.params, -1, []
    for epoch in range(cfg.epochs_for(len(tr))):
        state, train_loss = trainer.epoch(state, dtr, len(tr), rng)
        val_loss, v = trainer.evaluate(state.params, dva, len(va))
        err = v.astype(np.float64) - va.returns
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_mae": float(np.abs(err).mean()),
            "val_mse": float(np.mean(err**2)),
        }
        history.append(row)
        if log is not None:
            log(row)
        if row["val_mse"] < best:
            best, best_params, best_epoch = row["val_mse"], state.params, epoch
    return ValueTrainResult(best_params, kwargs, train_ids, val_ids, best_epoch, history)


# ------------------------------------------------------------------ inference, metrics, plots


def predict(
    params: value_net.ValueParams,
    inputs: np.ndarray,
    states: np.ndarray,
    batch_size: int = 256,
    *,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    """V̂ float32 [N] for inputs (images or features) [N, ...], states float32 [N, 32] and, for a network with
    the episode clock, the control steps int [N]."""
    f = jax.jit(value_net.predict_value)
    n = inputs.shape[0]
    batch_size = min(batch_size, n)
    both = np.arange(n)
    if steps is None:
        return _batched(
            lambda i: f(params, jnp.asarray(inputs[i]), jnp.asarray(states[i], jnp.float32)), both, batch_size
        )
    steps = np.asarray(steps, np.int32)
    return _batched(
        lambda i: f(params, jnp.asarray(inputs[i]), jnp.asarray(states[i], jnp.float32), jnp.asarray(steps[i])),
        both,
        batch_size,
    )


def predict_data(params: value_net.ValueParams, data: ValueData, batch_size: int = 256) -> np.ndarray:
    """V̂ float32 [N] for the rows of ``data`` (the clock, when the network reads it, from ``data.steps``)."""
    return predict(params, data.inputs, data.states, batch_size, steps=data.steps)


def predict_values(params: value_net.ValueParams, data: ValueData, batch_size: int = 256) -> dict[int, np.ndarray]:
    """{episode_id: V̂ float32 [Q]} aligned with each episode's imaged steps (the label stage's input)."""
    return per_episode(predict_data(params, data, batch_size), data)


def per_episode(values: np.ndarray, data: ValueData) -> dict[int, np.ndarray]:
    """Row-aligned values float [N] → {episode_id: float32 [Q]} in decision order."""
    out = {}
    for eid in np.unique(data.episode_ids):
        sel = data.episode_ids == eid
        out[int(eid)] = np.asarray(values)[sel][np.argsort(data.index[sel])].astype(np.float32)
    return out


def _safe(fn: Callable, *args) -> Any:
    try:
        return fn(*args)
    except ValueError:
        return float("nan")


def clock_only(train: ValueData, index: np.ndarray) -> np.ndarray:
    """The clock-only baseline: the mean training return at each decision index (float64 [N] for ``index``
    int [N]). An index never seen in training gets the return mean of the largest seen index below it (or the
    overall training mean when there is none)."""
    if len(train) == 0:
        raise ValueError("clock_only needs training rows")
    top = int(max(train.index.max(), np.max(index, initial=0))) + 1
    sums = np.bincount(train.index, weights=train.returns, minlength=top)
    counts = np.bincount(train.index, minlength=top)
    table = np.full(top, float(train.returns.mean()))
    last = float(train.returns.mean())
    for i in range(top):
        if counts[i]:
            last = sums[i] / counts[i]
        table[i] = last
    return table[np.asarray(index, np.int64)]


def within_bin_auc(values: np.ndarray, success: np.ndarray, index: np.ndarray) -> float:
    """Step AUC (V̂ vs the episode's success) within each decision index, averaged over the indices that have
    both outcomes (unweighted); NaN if none has. A function of the index alone scores exactly 0.5 here, so the
    episode clock cannot raise it."""
    aucs = []
    for i in np.unique(index):
        sel = index == i
        s = np.asarray(success, bool)[sel]
        if s.any() and not s.all():
            aucs.append(stats.roc_auc(np.asarray(values)[sel], s))
    return float(np.mean(aucs)) if aucs else float("nan")


# The credit-assignment goal of issue 22 (the paper's value function: step MSE 0.062 vs 0.13 naive, step AUC
# 0.837), stated on a collection of at least GOAL_EPISODES rollouts.
GOAL = {"mse_vs_clock_only": 0.9, "mse_vs_naive": 0.6, "step_auc": 0.75, "within_bin_step_auc": 0.65}
GOAL_EPISODES = 384


def credit_goal(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Whether ``metrics`` meet the goal: step MSE ≤ 0.9 × clock-only and ≤ 0.6 × naive, step AUC ≥ 0.75,
    within-bin step AUC ≥ 0.65 (each a bool or None when undefined), and on ≥ 384 episodes."""

    def ok(x, bar, le=False):
        if x is None or not np.isfinite(x) or bar is None or not np.isfinite(bar):
            return None
        return bool(x <= bar) if le else bool(x >= bar)

    mse = metrics.get("mse")
    checks = {
        "mse_vs_clock_only": ok(mse, GOAL["mse_vs_clock_only"] * metrics.get("clock_only_mse", float("nan")), True),
        "mse_vs_naive": ok(mse, GOAL["mse_vs_naive"] * metrics.get("naive_mse", float("nan")), True),
        "step_auc": ok(metrics.get("step_auc"), GOAL["step_auc"]),
        "within_bin_step_auc": ok(metrics.get("within_bin_step_auc"), GOAL["within_bin_step_auc"]),
        "episodes": bool(metrics.get("episodes", 0) >= GOAL_EPISODES),
    }
    checks["met"] = all(v is True for v in checks.values())
    return checks


def value_metrics(
    values: np.ndarray, data: ValueData, baseline: float | np.ndarray, clock: np.ndarray | None = None
) -> dict[str, float]:
    """Held-out metrics of predictions ``values`` float [N] (aligned with ``data``'s rows).

    Args:
      baseline: the naive prediction (the training mean return), a float or float [N] per row.
      clock: optional clock-only predictions float [N] (``clock_only`` of the training rows).

    Returns: {"mse", "naive_mse", "episode_auc" (V̂(o_0) vs success), "step_auc" (V̂(o_t) vs its episode's
      success), "within_bin_step_auc" (``within_bin_auc``), "kendall_tau", "kendall_p" (V̂(o_0) vs r_0),
      "episodes", "steps"}, plus "clock_only_mse" and "clock_only_step_auc" when ``clock`` is given; a metric
      that is undefined (one class only) is NaN.
    """
    values = np.asarray(values, np.float64)
    first = data.index == 0
    tau = _safe(stats.kendall_tau, values[first], data.returns[first])
    tau, p = tau if isinstance(tau, tuple) else (tau, float("nan"))
    out = {
        "mse": stats.mse(values, data.returns),
        "naive_mse": stats.mse(np.broadcast_to(np.asarray(baseline, np.float64), values.shape), data.returns),
        "episode_auc": _safe(stats.roc_auc, values[first], data.success[first]),
        "step_auc": _safe(stats.roc_auc, values, data.success),
        "within_bin_step_auc": within_bin_auc(values, data.success, data.index),
        "kendall_tau": float(tau),
        "kendall_p": float(p),
        "episodes": int(first.sum()),
        "steps": len(data),
    }
    if clock is not None:
        out["clock_only_mse"] = stats.mse(np.asarray(clock, np.float64), data.returns)
        out["clock_only_step_auc"] = _safe(stats.roc_auc, np.asarray(clock, np.float64), data.success)
    return out


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
    """``value_metrics`` on ``result``'s validation episodes (baselines fit on its training episodes: the mean
    return and the clock-only mean return per decision index); optional Fig. 4."""
    va = data.select(result.val_ids)
    tr = data.select(result.train_ids)
    v = predict_data(result.params, va)
    metrics = value_metrics(v, va, float(tr.returns.mean()), clock_only(tr, va.index))
    metrics["labels_out_of_fold"] = False
    metrics["goal"] = credit_goal(metrics)
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
    if ids.size < folds:
        raise ValueError(f"folds={folds} needs at least as many episodes, got {ids.size}")
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(ids.size, np.int64)
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(succ == cls))
        fold_of[members] = np.arange(members.size) % folds
    return ids, fold_of


@dataclasses.dataclass
class CrossFitResult:
    """Out-of-fold V̂ of ``cross_fit``.

    Attributes:
      values: {episode_id: V̂ float32 [Q]}, each from the fold model that did not train on the episode.
      oof: float32 [N] the same, aligned with the data's rows; fold: int64 [N] the fold of each row.
      results: per fold, a ``ValueTrainResult`` (train_ids = the other folds, val_ids = its held-out fold,
        params and best_epoch = the kept epoch, history = its per-epoch rows).
      curve: pooled held-out MSE per evaluated epoch over all folds; epochs: the evaluated epoch numbers.
      metrics: ``value_metrics`` of ``oof`` with per-fold naive and clock-only baselines, plus "folds",
        "labels_out_of_fold" (True), "best_epochs", "epochs", "train_steps", "fold_episode_auc", "goal".
    """

    values: dict[int, np.ndarray]
    oof: np.ndarray
    fold: np.ndarray
    results: list[ValueTrainResult]
    curve: list[float]
    epochs: list[int]
    metrics: dict[str, Any]


def _eval_epochs(total: int, max_evals: int = 100) -> list[int]:
    """The epochs (0-based) after which a fold is evaluated and kept: every one, or ~``max_evals`` evenly."""
    every = max(1, -(-total // max_evals))
    return sorted({e for e in range(every - 1, total, every)} | {total - 1})


def cross_fit(
    data: ValueData,
    cfg: ValueTrainConfig = ValueTrainConfig(),
    folds: int | None = None,
    log: Callable[[dict], None] | None = None,
) -> CrossFitResult:
    """k-fold value functions and their out-of-fold V̂ (labels from held-out folds, issue 22).

    Episodes are dealt to ``folds`` (default ``cfg.folds``) outcome-stratified folds. Fold k's model trains on
    the other folds for ``cfg.epochs_for`` epochs (the same for every fold) and predicts its held-out fold after
    every evaluated epoch; its parameters are kept on the host at each. Fold k then keeps the epoch whose
    validation MSE, pooled over the held-out episodes of the *other* folds, is lowest — early stopping on a
    validation set of (k − 1)/k of all episodes that never includes fold k's own, so every V̂ is strictly out of
    fold. Baselines are fit per fold on its training folds: the naive mean return and the clock-only mean return
    per decision index.
    """
    folds = cfg.folds if folds is None else folds
    ids, fold_of = fold_assignment(data, folds, cfg.split_seed)
    row_fold = np.zeros(len(data), np.int64)
    for k in range(folds):
        row_fold[np.isin(data.episode_ids, ids[fold_of == k])] = k
    kwargs = _net_kwargs(cfg, data)
    n_train = round(len(data) * (folds - 1) / folds)
    total = cfg.epochs_for(n_train)
    evals = _eval_epochs(total)
    preds, snaps, sse, histories = [], [], np.zeros((folds, len(evals))), []
    # One compiled program for every fold: the same batch, steps per epoch and (padded) device array sizes.
    sizes = [(int(np.sum(row_fold != k)), int(np.sum(row_fold == k))) for k in range(folds)]
    n_tr, n_ho = max(a for a, _ in sizes), max(b for _, b in sizes)
    trainer = _Trainer(cfg, kwargs, min(a for a, _ in sizes))
    tr_steps, ho_steps = -(-n_tr // trainer.batch), -(-n_ho // trainer.batch)
    for k in range(folds):
        tr, ho = data.select(ids[fold_of != k]), data.select(ids[fold_of == k])
        state = trainer.init(jax.random.fold_in(jax.random.key(cfg.seed), k))
        dtr, dho = _device_data(tr, n_tr), _device_data(ho, n_ho)
        rng = np.random.default_rng([cfg.seed, k])
        pk, sk, hist, j = [], [], [], 0
        for epoch in range(total):
            state, train_loss = trainer.epoch(state, dtr, len(tr), rng, tr_steps)
            if epoch != evals[j]:
                continue
            loss, v = trainer.evaluate(state.params, dho, len(ho), ho_steps)
            err = v.astype(np.float64) - ho.returns
            sse[k, j] = float(np.sum(err**2))
            row = {
                "fold": k,
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": loss,
                "val_mse": sse[k, j] / len(ho),
            }
            hist.append(row)
            if log is not None:
                log(row)
            pk.append(v)
            sk.append(jax.device_get(state.params))
            j += 1
        preds.append(pk)
        snaps.append(sk)
        histories.append(hist)
    rows_per_fold = np.array([np.sum(row_fold == k) for k in range(folds)], np.float64)
    oof = np.zeros(len(data), np.float32)
    results, best = [], []
    for k in range(folds):
        others = np.arange(folds) != k
        curve_k = sse[others].sum(0) / rows_per_fold[others].sum()
        j = int(np.argmin(curve_k))
        best.append(evals[j])
        oof[row_fold == k] = preds[k][j]
        params = jax.tree.map(jnp.asarray, snaps[k][j])
        results.append(ValueTrainResult(params, kwargs, ids[fold_of != k], ids[fold_of == k], evals[j], histories[k]))
    curve = (sse.sum(0) / rows_per_fold.sum()).tolist()
    naive, clock = np.zeros(len(data)), np.zeros(len(data))
    fold_auc = []
    for k in range(folds):
        rows = row_fold == k
        tr = data.select(ids[fold_of != k])
        naive[rows] = float(tr.returns.mean())
        clock[rows] = clock_only(tr, data.index[rows])
        held = data.select(ids[fold_of == k])
        fold_auc.append(value_metrics(oof[rows], held, naive[rows])["episode_auc"])
    metrics = value_metrics(oof, data, naive, clock)
    metrics.update(
        folds=folds,
        labels_out_of_fold=True,
        best_epochs=best,
        epochs=total,
        train_steps=total * tr_steps,
        fold_episode_auc=float(np.nanmean(fold_auc)) if np.isfinite(fold_auc).any() else float("nan"),
    )
    metrics["goal"] = credit_goal(metrics)
    return CrossFitResult(per_episode(oof, data), oof, row_fold, results, curve, evals, metrics)


def cross_fit_values(
    data: ValueData, cfg: ValueTrainConfig = ValueTrainConfig(), folds: int = 2
) -> tuple[dict[int, np.ndarray], list[ValueTrainResult]]:
    """``cross_fit``'s ({episode_id: out-of-fold V̂ float32 [Q]}, per-fold results)."""
    res = cross_fit(data, cfg, folds)
    return res.values, res.results


def cross_validated_metrics(
    data: ValueData, cfg: ValueTrainConfig = ValueTrainConfig(), folds: int = 5
) -> tuple[dict[str, Any], dict[int, np.ndarray], list[ValueTrainResult]]:
    """``cross_fit``'s (metrics over *all* episodes, out-of-fold V̂, per-fold results): the episode AUC rests on
    every episode instead of the ~10 % held out by one split."""
    res = cross_fit(data, cfg, folds)
    return res.metrics, res.values, res.results


def value_stage(
    episodes: Sequence,
    cfg: ValueTrainConfig,
    out_dir: str,
    *,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    log: Callable[[dict], None] | None = None,
) -> tuple[ValueTrainResult, dict[str, Any], dict[int, np.ndarray]]:
    """Build data → (frozen features) → train → held-out metrics + Fig. 4 → V̂ for every episode; saves to ``out_dir``.

    ``cfg.folds`` ≥ 2: ``cross_fit``; V̂ is out of fold for every episode, the metrics are over all episodes,
    the saved parameters (``value_params.npz``) are fold 0's and each fold's are in ``fold{k}/``. Otherwise one
    split (``train_value``): V̂ is predicted by the one model, in sample for its training episodes.

    Args:
      episodes: ``Episode`` records (e.g. ``store.load()``).
      features: for frozen backbones, ``uint8 [N, H, W, 3] → float32 [N, F]`` (e.g.
        ``lambda x: system2_features(policy_params, x, prompt)``); required unless backbone is "cnn".

    Returns: (result, metrics, {episode_id: V̂ [Q]}) — pass the last to ``labeling.label_store``.
    """
    data = stage_data(episodes, cfg, features)
    plot = os.path.join(out_dir, "value_calibration.png")
    if cfg.folds >= 2:
        cf = cross_fit(data, cfg, log=log)
        result, metrics, values = cf.results[0], cf.metrics, cf.values
        metrics["calibration_episode"] = _safe(plot_calibration, cf.oof, data, plot)
        metrics["best_epoch"] = int(np.median(cf.metrics["best_epochs"]))
        for k, r in enumerate(cf.results):
            r.save(os.path.join(out_dir, f"fold{k}"))
    else:
        result = train_value(data, cfg, log=log)
        metrics = evaluate_value(result, data, plot)
        metrics["best_epoch"] = result.best_epoch
        values = predict_values(result.params, data)
    result.save(out_dir)
    with open(os.path.join(out_dir, "value_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return result, metrics, values


def stage_data(
    episodes: Sequence, cfg: ValueTrainConfig, features: Callable[[np.ndarray], np.ndarray] | None = None
) -> ValueData:
    """``decision_points`` with cfg's return definition, frozen features applied for frozen backbones."""
    data = decision_points(episodes, returns=cfg.returns, max_steps=cfg.max_steps, c_fail=cfg.c_fail)
    if cfg.backbone != "cnn":
        if features is None:
            raise ValueError(f"backbone {cfg.backbone!r} needs a features function")
        data = data.with_inputs(np.asarray(features(data.inputs), np.float32))
    return data


def state_only_features(images: np.ndarray) -> np.ndarray:
    """The "state" backbone's input: a constant 0 per decision point, float32 [N, 1] (images unused)."""
    return np.zeros((np.shape(images)[0], 1), np.float32)


def features_for(cfg: ValueTrainConfig, **models: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The frozen-feature function of a backbone: ``policy_params=`` and ``prompt=`` for "system2",
    ``resnet=`` (a ``models.resnet.ResNet``) for "resnet50"; None for "cnn"."""
    if cfg.backbone == "cnn":
        return None
    if cfg.backbone == "system2":
        return lambda x: system2_features(models["policy_params"], x, models["prompt"])
    if cfg.backbone == "resnet50":
        return lambda x: resnet_features(models["resnet"], x)
    if cfg.backbone == "state":
        return state_only_features
    raise ValueError("backbone 'features' takes your own features function")


__all__ = [
    "BACKBONES",
    "GOAL",
    "GOAL_EPISODES",
    "CrossFitResult",
    "ValueData",
    "ValueTrainConfig",
    "ValueTrainResult",
    "calibration_episodes",
    "clock_only",
    "credit_goal",
    "cross_fit",
    "cross_fit_values",
    "cross_validated_metrics",
    "decision_points",
    "evaluate_value",
    "features_for",
    "fold_assignment",
    "load_value_params",
    "per_episode",
    "plot_calibration",
    "predict",
    "predict_data",
    "predict_values",
    "resnet_features",
    "stage_data",
    "state_only_features",
    "stratified_split",
    "system2_features",
    "train_value",
    "value_loss",
    "value_metrics",
    "value_stage",
    "within_bin_auc",
]
