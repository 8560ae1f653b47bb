"""TrainState, optimizers, the pure train step (bf16, EMA, frozen leaves, non-finite), and the host loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers_train import init_tiny, make_episode, tiny_policy_loss, tiny_value_loss

from recap_jax.data import EpisodeStore, LoaderConfig, WindowLoader
from recap_jax.train import (
    LoopConfig,
    MetricWriter,
    NonFiniteError,
    OptimizerConfig,
    TrainState,
    count_params,
    learning_rate_schedule,
    make_mesh,
    make_optimizer,
    make_train_step,
    read_jsonl,
    train,
    trainable_mask,
)
from recap_jax.train.sharding import jit_train_step, state_shardings


def _batch(b=8, seed=0, ret=False):
    rng = np.random.default_rng(seed)
    out = {
        "image": rng.integers(0, 256, (b, 8, 12, 3), dtype=np.uint8),
        "state": rng.normal(size=(b, 32)).astype(np.float32),
        "actions": rng.normal(size=(b, 30, 36)).astype(np.float32),
        "action_mask": np.ones((b, 30), bool),
    }
    if ret:
        out["return"] = -rng.uniform(size=b).astype(np.float32)
    return out


def test_schedules_and_defaults():
    cfg = OptimizerConfig.psi0(total_steps=3000)
    assert (cfg.lr, cfg.b1, cfg.b2, cfg.weight_decay, cfg.warmup_steps, cfg.clip_norm) == (
        1e-4,
        0.95,
        0.999,
        1e-6,
        1000,
        1.0,
    )
    sched = learning_rate_schedule(cfg)
    np.testing.assert_allclose(
        [sched(0), sched(500), sched(1000), sched(2000), sched(3000)], [0.0, 5e-5, 1e-4, 5e-5, 0.0], atol=1e-9
    )
    vcfg = OptimizerConfig.value()
    assert vcfg.kind == "adam" and vcfg.lr == 3e-4
    vs = learning_rate_schedule(vcfg)
    np.testing.assert_allclose([vs(0), vs(50), vs(100), vs(10**6)], [0.0, 1.5e-4, 3e-4, 3e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer kind 'sgd'"):
        make_optimizer(OptimizerConfig(kind="sgd"))
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        make_optimizer(OptimizerConfig(total_steps=10))


def test_clipping_and_weight_decay_in_chain():
    cfg = OptimizerConfig(kind="adamw", lr=1.0, warmup_steps=0, total_steps=10, weight_decay=0.5, clip_norm=1.0)
    tx = make_optimizer(cfg)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.5 * np.ones((2, 2)))  # decoupled decay on the matrix
    np.testing.assert_allclose(upd["b"], 0.0)  # not on the vector
    clip = optax.clip_by_global_norm(1.0)
    big = {"w": 100 * jnp.ones((2, 2)), "b": jnp.zeros(2)}
    out, _ = clip.update(big, clip.init(params))
    assert optax.tree.norm(out) == pytest.approx(1.0, rel=1e-5)


def test_trainable_mask_and_create():
    params = init_tiny(jax.random.PRNGKey(0), 36)
    mask = trainable_mask(params)
    assert not any(jax.tree.leaves(mask.norm_stats)) and all(jax.tree.leaves(mask.state))
    tx = make_optimizer(OptimizerConfig.value())
    st = TrainState.create(params, tx, jax.random.key(3), ema=True)
    assert st.rng.dtype == jnp.uint32 and st.rng.shape == (2,) and int(st.step) == 0 and int(st.nonfinite_step) == -1
    assert count_params(st.params, st.mask) == (33 * 64 + 64) + (64 * 64 + 64) + (64 * 36 + 36)
    st2 = TrainState.create(params, tx, jax.random.PRNGKey(3), mask=lambda p: jax.tree.map(lambda _: False, p))
    assert count_params(st2.params, st2.mask) == 0


def test_step_learns_keeps_frozen_and_is_deterministic():
    params = init_tiny(jax.random.PRNGKey(0), 201)
    tx = make_optimizer(OptimizerConfig.value(lr=3e-3, warmup_steps=0))
    state = TrainState.create(params, tx, jax.random.PRNGKey(1), ema=True)
    step = jax.jit(chex.assert_max_traces(make_train_step(tiny_value_loss, tx, ema_decay=0.9), n=1))
    batch = _batch(16, ret=True)
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]  # memorises one batch
    assert int(state.step) == 30 and float(m["finite"]) == 1.0
    np.testing.assert_array_equal(state.params.norm_stats["state_min"], -np.ones(32))
    # EMA lags the params but tracks them.
    w, e = state.params.state["l3"]["kernel"][...], state.ema_params.state["l3"]["kernel"][...]
    assert 0 < float(jnp.abs(w - e).max()) < float(jnp.abs(w).max())
    # The step key is fold_in(rng, step): same state + batch -> same result.
    s0 = TrainState.create(params, tx, jax.random.PRNGKey(1), ema=True)
    _, m1 = step(s0, _batch(16, seed=1, ret=True))
    _, m2 = step(s0, _batch(16, seed=1, ret=True))
    assert float(m1["loss"]) == float(m2["loss"])


def test_bf16_compute_keeps_f32_master():
    params = init_tiny(jax.random.PRNGKey(0), 36)
    tx = make_optimizer(OptimizerConfig.psi0(total_steps=100, warmup_steps=0, lr=1e-3))
    state = TrainState.create(params, tx, jax.random.PRNGKey(1))
    seen = {}

    def loss(p, batch, key):
        seen["dtype"] = p.state["l1"]["kernel"][...].dtype
        seen["state"] = batch["state"].dtype
        return tiny_policy_loss(p, batch, key)

    f32 = jax.jit(make_train_step(tiny_policy_loss, tx))
    bf16 = jax.jit(make_train_step(loss, tx, compute_dtype=jnp.bfloat16))
    _, m32 = f32(state, _batch())
    s16, m16 = bf16(state, _batch())
    assert seen == {"dtype": jnp.bfloat16, "state": jnp.bfloat16}
    assert s16.params.state["l1"]["kernel"][...].dtype == jnp.float32
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=5e-2)


def test_nonfinite_step_is_skipped_and_named(tmp_path):
    params = init_tiny(jax.random.PRNGKey(0), 36)
    tx = make_optimizer(OptimizerConfig.psi0(total_steps=100, warmup_steps=0))
    state = TrainState.create(params, tx, jax.random.PRNGKey(1))
    step = jax.jit(make_train_step(tiny_policy_loss, tx))
    good = [_batch(seed=i) for i in range(6)]
    bad = _batch(seed=9)
    bad["state"][3, 5] = np.nan
    batches = iter([*good[:4], bad, *good[4:]])
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient norm at step 4 "):
        train(state, step, batches, LoopConfig(num_steps=6, log_every=3, progress=False))
    # The bad update itself is skipped and recorded in the state.
    s, m = step(state, bad)
    assert float(m["finite"]) == 0.0 and int(s.nonfinite_step) == 0
    chex.assert_trees_all_equal(s.params, state.params)


def test_loop_with_loader_writes_metrics(tmp_path):
    store = EpisodeStore(tmp_path / "store", create=True)
    store.append([make_episode(i, n_steps=40) for i in range(4)])
    mesh = make_mesh(fsdp=2)
    loader = WindowLoader(store, LoaderConfig(batch_size=8, seed=0), mesh=mesh)
    tx = make_optimizer(OptimizerConfig.psi0(total_steps=20, warmup_steps=2, lr=1e-3))
    state = TrainState.create(init_tiny(jax.random.PRNGKey(0), 36), tx, jax.random.PRNGKey(1))
    shardings = state_shardings(jax.eval_shape(lambda: state), mesh, min_size_bytes=0)
    step = jit_train_step(
        make_train_step(
            tiny_policy_loss,
            tx,
            lr_schedule=learning_rate_schedule(OptimizerConfig.psi0(total_steps=20, warmup_steps=2, lr=1e-3)),
        ),
        shardings,
        mesh,
    )
    with MetricWriter(tmp_path / "logs") as writer, loader:
        state, history = train(
            jax.device_put(state, shardings),
            step,
            loader,
            LoopConfig(num_steps=7, log_every=3, progress=True),
            writer=writer,
        )
    assert [h["step"] for h in history] == [3, 6, 7]
    rows = read_jsonl(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [3, 6, 7] and {"loss", "grad_norm", "lr", "mse"} <= set(rows[0])
    assert list((tmp_path / "logs" / "tb").glob("events.out.tfevents.*"))
    assert loader.state_dict()["epoch"] * loader.steps_per_epoch + loader.state_dict()["step"] == 7


def test_eval_step_uses_inference_params():
    from recap_jax.train import make_eval_step

    params = init_tiny(jax.random.PRNGKey(0), 201)
    tx = make_optimizer(OptimizerConfig.value(lr=1e-2, warmup_steps=0))
    state = TrainState.create(params, tx, jax.random.PRNGKey(1), ema=True)
    state, _ = jax.jit(make_train_step(tiny_value_loss, tx, ema_decay=0.5))(state, _batch(ret=True))
    ev = jax.jit(make_eval_step(tiny_value_loss))(state, _batch(ret=True))
    want, _ = tiny_value_loss(state.inference_params, _batch(ret=True), None)
    assert set(ev) == {"loss", "ce"} and float(ev["loss"]) == pytest.approx(float(want), rel=1e-6)
    chex.assert_trees_all_equal(state.inference_params.norm_stats, state.params.norm_stats)
    assert not np.array_equal(
        state.inference_params.state["l1"]["kernel"][...], state.params.state["l1"]["kernel"][...]
    )


def test_distributed_initialize_single_process_and_errors(monkeypatch):
    from recap_jax.train import initialize

    for k in ("RECAP_COORDINATOR_ADDRESS", "RECAP_NUM_PROCESSES", "RECAP_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert initialize() == (0, 1)
    with pytest.raises(ValueError, match="without num_processes/process_id"):
        initialize("127.0.0.1:1234")


def test_grad_accumulation_matches_full_batch_sharded():
    from recap_jax.train import init_sharded, put_batch

    tx = make_optimizer(OptimizerConfig.value(lr=1e-2, warmup_steps=0, eps=1.0))

    def init(key):
        return TrainState.create(init_tiny(key, 201), tx, jax.random.PRNGKey(1))

    mesh = make_mesh(fsdp=2)
    state, shardings = init_sharded(init, mesh, jax.random.PRNGKey(0), min_size_bytes=1024)
    single = jax.device_put(jax.device_get(state), jax.devices()[0])
    batch = _batch(32, ret=True)
    accum = jit_train_step(make_train_step(tiny_value_loss, tx, grad_accum_steps=4), shardings, mesh)
    full = jax.jit(make_train_step(tiny_value_loss, tx))
    state, m = accum(state, put_batch(batch, mesh))
    single, ms = full(single, batch)
    assert float(m["loss"]) == pytest.approx(float(ms["loss"]), rel=1e-5)
    assert float(m["ce"]) == pytest.approx(float(ms["ce"]), rel=1e-5)
    assert float(m["grad_norm"]) == pytest.approx(float(ms["grad_norm"]), rel=1e-4)
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(single.params), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
        jax.jit(make_train_step(tiny_value_loss, tx, grad_accum_steps=3))(single, _batch(8, ret=True))


def test_metric_writer_only_on_main_process(tmp_path):
    with MetricWriter(tmp_path / "off", enabled=False) as w:
        w.write(1, {"loss": 1.0})
    assert not (tmp_path / "off").exists()
    with MetricWriter(tmp_path / "on", tensorboard=False) as w:
        w.write(1, {"loss": 1.0})
        w.write(2, {"loss": float("nan")})
    rows = read_jsonl(tmp_path / "on" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 1.0 and np.isnan(rows[1]["loss"])
