"""Closed-loop rollouts of any policy in the batched env, entirely on device, in waves.

One wave = N envs × ``episode_length`` control steps = Q = ceil(T / Ta) policy queries. A wave
(``run_wave``) is two jitted programs, both on device: ``vmap(env.reset)`` (one program per env and wave
size, shared by every policy), then the closed loop from those states, a ``lax.scan`` over the Q decision
points; at each one every env is rendered once (``obs["image"]``; ``obs["t"]`` i32[N] is the control
step), the policy is queried once (``act(params, obs, prompt_ids, key, *, beta) -> f32[B, H, 36]``), and
an inner ``lax.scan`` executes the first Ta actions of the chunk with
``vmap(env.step)``. Finished envs are frozen (their state is kept) and their records masked on the host by
``n_steps``. ``params``, ``prompt_ids``, ``beta`` and the episode ids are traced arguments, so one
compiled program serves every condition (checkpoint, prompt, β); only ``env``, ``act``, ``ta``,
``record``, ``rtc`` and ``frames`` are static. Each program holds one copy of the MJX physics step (the
reset's stand-stabilisation loop; the loop's control steps), which dominates its compile time: keeping
the reset out of the loop program means a cold study compiles the reset once, not once per policy
(expert, learned policy).

Keys: episode ``i`` of namespace ``ns`` uses ``k_i = fold_in(fold_in(key(seed), ns), i)``; the env is reset
with ``fold_in(k_i, 0)`` and decision point ``q`` draws policy noise from ``fold_in(fold_in(k_i, 1), q)``.
The policy is vmapped over envs with one key each, so an episode depends only on (seed, namespace, id,
params, prompt, β) — not on the wave size or on which other episodes share its wave. Collection uses
namespace ``COLLECT`` (ids ≥ ``first_id``), evaluation ``EVAL``: the two never share a key, and evaluation
episodes are identical across conditions (paired comparisons).

Real-time chunking (``rtc=True``): the scan also carries each env's previous chunk state (for the
learned policy, ``policy.sample_actions_rtc``: the normalised chunk, whose [Ta:] is the next query's
clean prefix, Ψ0's RTC); the first query of an episode is told it has none (``prev_valid`` False) and
samples plainly. The scripted expert runs with ``rtc=False`` (no carry).

The env must be built with ``camera=False``: the rollout renders with ``env.render`` at decision points
only (a camera env would render at all 24 control steps of a chunk), unless asked for ``frames="every"``
(a frame per control step, for export). Switch off host callbacks inside
``env.step`` (System-0's ``warn_unsupported``): one would put a host round-trip in every control step
(measured: 2.2× slower waves on CPU) and keep the wave out of the persistent compilation cache.

Host side: ``collect`` streams each wave into an ``EpisodeStore`` (one ``append`` per wave) and skips ids
already present, so a restarted collection reaches exactly the requested ids; ``evaluate`` returns
per-episode success / n_steps / failure cause in episode-id order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.data import Episode
from recap_jax.models.tokenizer import ByteTokenizer

TA = 24  # actions executed per query
COLLECT = 0  # key namespace of collection episodes
EVAL = 1  # key namespace of evaluation episodes
FAILURE_CAUSES = ("success", "timeout", "fell", "nan")  # codes 0..3 of ``WaveResult.cause``

ActFn = Callable[..., jax.Array]


def episode_key(seed: int | jax.Array, namespace: int, episode_id: int | jax.Array) -> jax.Array:
    """The PRNG key of one episode: ``fold_in(fold_in(key(seed), namespace), episode_id)``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), namespace), episode_id)


def _where_tree(cond: jax.Array, a, b):
    """Per-env select over a batched pytree: a where cond [N] else b."""
    return jax.tree.map(lambda x, y: jnp.where(cond.reshape(cond.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def _act_one(act: ActFn, params, obs, prompt_ids, key, beta, act_kwargs):
    """Calls the batched policy on one env (batch of 1) so that every env has its own key."""
    add = lambda x: x[None]
    kwargs = jax.tree.map(add, act_kwargs)
    out = act(params, jax.tree.map(add, obs), prompt_ids[None], key, beta=beta, **kwargs)
    return jax.tree.map(lambda x: x[0], out)


def _query_policy(env, act: ActFn, params, prompt_ids, beta, act_kwargs, keys, state, prev):
    """Renders every env and queries the policy once per env. ``prev``: None, or (prev_chunk [N, ...],
    prev_valid bool [N]) passed to ``act`` as keywords (RTC). Returns (image u8[N, h, w, 3], act's output)."""
    image = jax.vmap(env.render)(state)
    obs = {**state.obs, "image": image, "t": state.info["step"]}  # t: i32[N] control step (episode clock)
    kw = dict(act_kwargs) if prev is None else {**act_kwargs, "prev_chunk": prev[0], "prev_valid": prev[1]}
    out = jax.vmap(functools.partial(_act_one, act), in_axes=(None, 0, 0, 0, None, 0))(
        params, obs, prompt_ids, keys, beta, kw
    )
    return image, out


def _query_step(
    env,
    act: ActFn,
    ta: int,
    record: bool,
    rtc: bool,
    frames: str,
    params,
    prompt_ids,
    beta,
    act_kwargs,
    pol_keys,
    carry,
    q,
):
    """One decision point for all envs: render, query the policy, execute Ta actions (inner scan).

    ``carry``: the env state, with ``rtc`` a pair (state, previous chunk state [N, ...]); at q = 0 the
    previous chunk is marked invalid (the first query of an episode samples plainly)."""
    state, prev = carry if rtc else (carry, None)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, q))(pol_keys)
    valid = jnp.full(pol_keys.shape[:1], q > 0)
    image, out = _query_policy(
        env, act, params, prompt_ids, beta, act_kwargs, keys, state, None if prev is None else (prev, valid)
    )
    if rtc:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("with rtc=True, act must return (chunk or (execute, label), next prev_chunk)")
        out, prev = out
    chunk, label = out if isinstance(out, tuple) else (out, out)
    for c in (chunk, label):
        if c.ndim != 3 or c.shape[1] < ta or c.shape[2] != env.action_size:
            raise ValueError(f"act must return f32[B, H >= {ta}, {env.action_size}] (or a pair of them), got {c.shape}")
    steps_in = jax.tree.map(lambda c: jnp.swapaxes(c[:, :ta].astype(jnp.float32), 0, 1), (chunk, label))
    step = functools.partial(_control_step, env, record and frames == "every")
    state, recs = jax.lax.scan(step, state, steps_in)
    out = (image, *recs) if record else ()
    return ((state, prev) if rtc else state), out


def _control_step(env, render: bool, state, action_label):
    """One control step of all envs; done envs keep their state. Executes ``action``, records (state before,
    ``label``): the same action, or the label chunk of an ``act`` that returns (execute, label); with
    ``render`` also the frame of the state before the action."""
    action, label = action_label
    new = jax.vmap(env.step)(state, action)
    new = _where_tree(state.done > 0, state, new)
    rec = (state.obs["state"], label)
    if render:
        rec = (*rec, jax.vmap(env.render)(state))
    return new, rec


def _failure_cause(state) -> jax.Array:
    m = state.metrics
    cause = jnp.where(m["success"] > 0, 0, jnp.where(m["fell"] > 0, 2, 1))
    if "nan" in m:
        cause = jnp.where((m["nan"] > 0) & (m["success"] <= 0), 3, cause)
    return cause.astype(jnp.int8)


def _episode_keys(key, ids):
    """The episode keys ``k_i = fold_in(key, ids[i])`` [N]."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def _reset(env, key, ids):
    """``vmap(env.reset)`` of the wave's episodes, each reset with ``fold_in(k_i, 0)``."""
    return jax.vmap(env.reset)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(_episode_keys(key, ids)))


def _wave(
    env,
    act: ActFn,
    ta: int,
    record: bool,
    rtc: bool,
    frames: str,
    params,
    prompt_ids,
    beta,
    key,
    ids,
    act_kwargs,
    state,
):
    """The closed loop from the reset states ``state`` (batched over the wave's N envs)."""
    n_queries = -(-int(env.config.episode_length) // ta)
    pol_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(_episode_keys(key, ids))
    body = functools.partial(
        _query_step, env, act, ta, record, rtc, frames, params, prompt_ids, beta, act_kwargs, pol_keys
    )
    carry = state
    if rtc:  # the carried chunk state has the shape act gives it at a first query (prev_chunk=None)
        first = lambda st: _query_policy(env, act, params, prompt_ids, beta, act_kwargs, pol_keys, st, None)[1]
        shape = jax.eval_shape(first, state)
        if not (isinstance(shape, tuple) and len(shape) == 2):
            raise ValueError("with rtc=True, act must return (chunk or (execute, label), next prev_chunk)")
        carry = (state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape[1]))
    carry, recs = jax.lax.scan(body, carry, jnp.arange(n_queries))
    state = carry[0] if rtc else carry
    out = {
        "success": state.metrics["success"] > 0,
        "n_steps": state.info["step"].astype(jnp.int32),
        "cause": _failure_cause(state),
    }
    if record:
        image, states, actions = recs[:3]  # [Q, N, H, W, 3], [Q, Ta, N, 32], [Q, Ta, N, 36]
        n = ids.shape[0]
        out["states"] = jnp.moveaxis(states, 2, 0).reshape(n, n_queries * ta, -1)
        out["actions"] = jnp.moveaxis(actions, 2, 0).reshape(n, n_queries * ta, -1)
        if frames == "every":  # [Q, Ta, N, H, W, 3] -> [N, Q·Ta, H, W, 3]
            every = recs[3]
            out["images"] = jnp.moveaxis(every, 2, 0).reshape(n, n_queries * ta, *every.shape[3:])
        else:
            out["images"] = jnp.swapaxes(image, 0, 1)
    return out


# The wave's two programs (see the module docstring for why the reset is its own).
_reset_jit = jax.jit(_reset, static_argnums=(0,))
_wave_jit = jax.jit(_wave, static_argnums=(0, 1, 2, 3, 4, 5))
FRAMES = ("decision", "every")  # values of ``run_wave(frames=...)``


def run_wave(
    env,
    act: ActFn,
    params: Any,
    prompt_ids: jax.Array,
    beta: float | jax.Array,
    key: jax.Array,
    ids: jax.Array,
    *,
    ta: int = TA,
    record: bool = True,
    act_kwargs: Mapping[str, jax.Array] | None = None,
    rtc: bool = False,
    frames: str = "decision",
) -> dict[str, jax.Array]:
    """Runs N episodes closed-loop on device (a reset program per env, a loop program per
    (env, act, ta, record, rtc, frames)).

    Args:
      env: a ``G1BendPick``-like env (single-env ``reset``/``step``/``render``), built with ``camera=False``.
      act: the policy, ``act(params, obs, prompt_ids, key, *, beta, **act_kwargs) -> f32[B, H, 36]``; pass the
        same function object every call (it is a static argument). It may instead return a pair
        ``(execute, label)`` of such chunks: the env executes ``execute`` and the records hold ``label``
        (DART-style data: a noised expert drives, the clean expert labels; see ``envs.g1.expert.dart_act``).
      params: any pytree (traced).
      prompt_ids: int32 [N, L] token ids (traced).
      beta: float scalar (traced).
      key: the namespace key ``fold_in(key(seed), namespace)``; episode i uses ``fold_in(key, ids[i])``.
      ids: int32 [N] episode ids.
      ta: actions executed per query (static, ≤ H).
      record: also return the per-step records (static; False for evaluation).
      act_kwargs: extra per-env policy inputs with leading axis N (traced), e.g. ``{"uncond_ids": ...}``.
      rtc: closed-loop real-time chunking (static). False: ``act`` as above. True: the rollout carries a
        per-env chunk state through its scan and ``act`` is also called with ``prev_chunk=`` (that state,
        batch 1) and ``prev_valid=`` (bool [B], False at the first query of an episode, True after) and
        must return ``(result, next_prev_chunk)`` where ``result`` is what it returns without rtc; the
        carry's shape is taken from ``act``'s output at a first query (``prev_chunk=None``), whose
        carried value is then zeros. For the learned policy ``act = policy.sample_actions_rtc``, whose
        chunk state is the normalised chunk f32[B, H, 36] and whose prefix is its [Ta:] (so pass
        ``ta = config.execute``).
      frames: "decision" (default): ``images`` holds the frame rendered at each decision point (what the
        policy saw); "every": also renders inside the control loop and ``images`` holds one frame per
        control step (for export, e.g. ``recap_jax.data.lerobot.export_lerobot``; Ta× the memory).
        Static; only read with ``record``.

    Returns (device arrays): ``success`` bool [N], ``n_steps`` int32 [N], ``cause`` int8 [N] (index into
      ``FAILURE_CAUSES``), and with ``record``: ``images`` uint8 [N, Q, H, W, 3] (decision point q is control
      step q·Ta; with ``frames="every"`` [N, Q·Ta, H, W, 3], one per control step), ``states`` f32
      [N, Q·Ta, 32] (state before each action), ``actions`` f32 [N, Q·Ta, 36].
      Entries at or past ``n_steps`` are padding.
    """
    if getattr(getattr(env, "config", None), "camera", False):
        raise ValueError("build the env with camera=False: the rollout renders only at decision points")
    if ta < 1:
        raise ValueError(f"ta must be >= 1, got {ta}")
    if frames not in FRAMES:
        raise ValueError(f"frames must be one of {FRAMES}, got {frames!r}")
    ids = jnp.asarray(ids, jnp.int32)
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if ids.ndim != 1 or prompt_ids.ndim != 2 or prompt_ids.shape[0] != ids.shape[0]:
        raise ValueError(f"need ids [N] and prompt_ids [N, L], got {ids.shape} and {prompt_ids.shape}")
    act_kwargs = {} if act_kwargs is None else dict(act_kwargs)
    state = _reset_jit(env, key, ids)
    beta = jnp.asarray(beta, jnp.float32)
    return _wave_jit(env, act, ta, record, bool(rtc), frames, params, prompt_ids, beta, key, ids, act_kwargs, state)


@dataclasses.dataclass
class WaveResult:
    """One wave on the host (numpy). Arrays are indexed by env; see ``run_wave`` for shapes."""

    episode_ids: np.ndarray
    success: np.ndarray
    n_steps: np.ndarray
    cause: np.ndarray
    ta: int
    images: np.ndarray | None = None
    states: np.ndarray | None = None
    actions: np.ndarray | None = None
    frames: str = "decision"

    def episodes(self, prompt: str, tags: Mapping[str, Any] | None = None) -> list[Episode]:
        """Converts each env's records to an ``Episode`` (only the valid prefix of every array)."""
        if self.states is None:
            raise ValueError("this wave was run with record=False")
        out = []
        for i, eid in enumerate(self.episode_ids):
            n = int(self.n_steps[i])
            q = -(-n // self.ta)  # decision points at steps 0, Ta, ... < n
            steps = np.arange(n) if self.frames == "every" else np.arange(q) * self.ta
            out.append(
                Episode(
                    episode_id=int(eid),
                    states=self.states[i, :n],
                    actions=self.actions[i, :n],
                    image_steps=steps.astype(np.int32),
                    images=self.images[i, : steps.size],
                    prompt=prompt,
                    success=bool(self.success[i]),
                    n_steps=n,
                    tags={"kind": "rollout", **dict(tags or {})},
                )
            )
        return out


def _prompt_rows(prompt: str, prompt_ids: np.ndarray | None, n: int) -> np.ndarray:
    if prompt_ids is None:
        prompt_ids = ByteTokenizer().encode(prompt)[0]
    ids = np.asarray(prompt_ids, np.int32)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] not in (1, n):
        raise ValueError(f"prompt_ids must be [L], [1, L] or [{n}, L], got {ids.shape}")
    return np.broadcast_to(ids, (n, ids.shape[1]))


def _waves(
    env,
    act,
    params,
    ids: list[int],
    *,
    seed,
    namespace,
    num_envs,
    prompt,
    prompt_ids,
    beta,
    ta,
    record,
    act_kwargs,
    rtc=False,
    frames="decision",
):
    """Yields a ``WaveResult`` per group of ≤ ``num_envs`` ids (the last wave is padded, padding dropped)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    key = jax.random.fold_in(jax.random.key(seed), namespace)
    rows = _prompt_rows(prompt, prompt_ids, num_envs)
    for start in range(0, len(ids), num_envs):
        chunk = ids[start : start + num_envs]
        padded = np.array(chunk + [chunk[-1]] * (num_envs - len(chunk)), np.int32)
        out = jax.device_get(
            run_wave(
                env,
                act,
                params,
                rows,
                beta,
                key,
                padded,
                ta=ta,
                record=record,
                act_kwargs=act_kwargs,
                rtc=rtc,
                frames=frames,
            )
        )
        k = len(chunk)
        yield WaveResult(
            episode_ids=np.asarray(chunk, np.int64),
            success=out["success"][:k],
            n_steps=out["n_steps"][:k],
            cause=out["cause"][:k],
            ta=ta,
            images=out["images"][:k] if record else None,
            states=out["states"][:k] if record else None,
            actions=out["actions"][:k] if record else None,
            frames=frames,
        )


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ep")


def collect(
    env,
    act: ActFn,
    params: Any,
    store,
    num_episodes: int,
    *,
    prompt: str,
    prompt_ids: np.ndarray | None = None,
    seed: int = 0,
    first_id: int = 0,
    num_envs: int = 64,
    beta: float = 1.0,
    ta: int = TA,
    tags: Mapping[str, Any] | None = None,
    act_kwargs: Mapping[str, Any] | None = None,
    namespace: int = COLLECT,
    progress: bool = True,
    rtc: bool = False,
    frames: str = "decision",
    episode_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Collects episodes ``first_id .. first_id + num_episodes − 1`` (or the given ``episode_ids``) into
    ``store``, one ``append`` per wave.

    Ids already in the store are skipped (a restarted collection finishes exactly the missing ones, each
    with its own key), so afterwards the store holds every requested id exactly once.

    Args:
      env, act, params, beta, ta, act_kwargs, rtc: as ``run_wave``.
      frames: "decision" (the store's imaged steps are the decision points, what the policy saw and what
        the loader trains on) or "every" (an image at every control step, e.g. for ``export_lerobot``).
      store: ``recap_jax.data.EpisodeStore``.
      prompt: the bare instruction stored with each episode (and tokenised when ``prompt_ids`` is None).
      prompt_ids: int32 [L] (or [1, L]) ids given to the policy, e.g. an advantage-prefixed prompt.
      seed, first_id, namespace: episode i uses ``episode_key(seed, namespace, i)``.
      episode_ids: the ids to collect, in place of the range (``num_episodes`` and ``first_id`` are then
        ignored); e.g. every other id of a collection whose halves differ in ``act_kwargs``.
      tags: merged into each episode's tags (``"kind": "rollout"`` by default; add "policy", "iteration").

    Returns: {"requested", "skipped", "collected", "successes", "success_rate"} (of the episodes collected now).
    """
    if episode_ids is None:
        if num_episodes < 0 or first_id < 0:
            raise ValueError(f"need num_episodes >= 0 and first_id >= 0, got {num_episodes}, {first_id}")
        wanted = list(range(first_id, first_id + num_episodes))
    else:
        wanted = [int(i) for i in episode_ids]
        if len(set(wanted)) != len(wanted) or any(i < 0 for i in wanted):
            raise ValueError(f"episode_ids must be distinct and >= 0, got {wanted}")
        num_episodes = len(wanted)
    have = set(store.episode_ids())
    todo = [i for i in wanted if i not in have]
    tags = {"seed": seed, **dict(tags or {})}
    bar = _progress(num_episodes, progress, "collect")
    if bar is not None:
        bar.update(num_episodes - len(todo))
    done = succ = 0
    for wave in _waves(
        env,
        act,
        params,
        todo,
        seed=seed,
        namespace=namespace,
        num_envs=num_envs,
        prompt=prompt,
        prompt_ids=prompt_ids,
        beta=beta,
        ta=ta,
        record=True,
        act_kwargs=act_kwargs,
        rtc=rtc,
        frames=frames,
    ):
        store.append(wave.episodes(prompt, tags))
        done += len(wave.episode_ids)
        succ += int(wave.success.sum())
        if bar is not None:
            bar.update(len(wave.episode_ids))
            bar.set_postfix(success=f"{succ / done:.1%}")
    if bar is not None:
        bar.close()
    return {
        "requested": num_episodes,
        "skipped": num_episodes - len(todo),
        "collected": done,
        "successes": succ,
        "success_rate": succ / done if done else float("nan"),
    }


def evaluate(
    env,
    act: ActFn,
    params: Any,
    num_episodes: int,
    *,
    prompt: str,
    prompt_ids: np.ndarray | None = None,
    seed: int = 0,
    num_envs: int = 64,
    beta: float = 1.0,
    ta: int = TA,
    act_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    rtc: bool = False,
) -> dict[str, np.ndarray]:
    """Evaluates a policy on the held-out episodes ``0 .. num_episodes − 1`` of the ``EVAL`` key namespace.

    The same (seed, num_episodes) gives every condition the same initial states, so results pair by index.
    ``rtc``: as ``run_wave`` (True with ``act = policy.sample_actions_rtc``).

    Returns: {"episode_ids" int64 [E], "success" bool [E], "n_steps" int32 [E], "cause" int8 [E] (index into
      ``FAILURE_CAUSES``)}, in episode-id order.
    """
    ids = list(range(num_episodes))
    parts = []
    bar = _progress(num_episodes, progress, "evaluate")
    succ = 0
    for wave in _waves(
        env,
        act,
        params,
        ids,
        seed=seed,
        namespace=EVAL,
        num_envs=num_envs,
        prompt=prompt,
        prompt_ids=prompt_ids,
        beta=beta,
        ta=ta,
        record=False,
        act_kwargs=act_kwargs,
        rtc=rtc,
    ):
        parts.append(wave)
        succ += int(wave.success.sum())
        if bar is not None:
            bar.update(len(wave.episode_ids))
            bar.set_postfix(success=f"{succ / sum(len(p.episode_ids) for p in parts):.1%}")
    if bar is not None:
        bar.close()
    cat = lambda f, dt: np.concatenate([getattr(p, f) for p in parts]).astype(dt) if parts else np.zeros(0, dt)
    return {
        "episode_ids": cat("episode_ids", np.int64),
        "success": cat("success", bool),
        "n_steps": cat("n_steps", np.int32),
        "cause": cat("cause", np.int8),
    }
