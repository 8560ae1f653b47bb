"""Closed-loop rollouts of any policy in the batched env, entirely on device, in waves.

One wave = N envs × ``episode_length`` control steps = Q = ceil(T / Ta) policy queries. A wave
(``run_wave``) is two jitted programs, both on device: ``vmap(env.reset)`` (one program per env and wave
size, shared by every policy), then the closed loop from those states, a ``lax.scan`` over the Q decision
points; at each one every env is rendered once (``obs["image"]``; ``obs["t"]`` i32[N] is the control
step), the policy is queried once (``act(params, obs, prompt_ids, key, *, beta) -> f32[B, H, 36]``), and
an inner ``lax.scan`` executes the first Ta actions of the chunk with
``vmap(env.step)``. Finished envs are frozen (their state is kept) and their records masked on the host by
``n_steps``. ``params``, ``prompt_ids``, ``beta`` and the episode ids are traced arguments, so one
compiled program serves every condition (checkpoint, prompt, β); only ``env``, ``act``, ``ta`` and
``record`` are static. Each program holds one copy of the MJX physics step (the reset's stand-stabilisation
loop; the loop's control steps), which dominates its compile time: keeping the reset out of the loop
program means a cold study compiles the reset once, not once per policy (expert, learned policy).

Keys: episode ``i`` of namespace ``ns`` uses ``k_i = fold_in(fold_in(key(seed), ns), i)``; the env is reset
with ``fold_in(k_i, 0)`` and decision point ``q`` draws policy noise from ``fold_in(fold_in(k_i, 1), q)``.
The policy is vmapped over envs with one key each, so an episode depends only on (seed, namespace, id,
params, prompt, β) — not on the wave size or on which other episodes share its wave. Collection uses
namespace ``COLLECT`` (ids ≥ ``first_id``), evaluation ``EVAL``: the two never share a key, and evaluation
episodes are identical across conditions (paired comparisons).

The env must be built with ``camera=False``: the rollout renders with ``env.render`` at decision points
only (a camera env would render at all 24 control steps of a chunk). Switch off host callbacks inside
``env.step`` (System-0's ``warn_unsupported``): one would put a host round-trip in every control step
(measured: 2.2× slower waves on CPU) and keep the wave out of the persistent compilation cache.

Host side: ``collect`` streams each wave into an ``EpisodeStore`` (one ``append`` per wave) and skips ids
already present, so a restarted collection reaches exactly the requested ids; ``evaluate`` returns
per-episode success / n_steps / failure cause in episode-id order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
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


def _query_step(env, act: ActFn, ta: int, record: bool, params, prompt_ids, beta, act_kwargs, pol_keys, carry, q):
    """One decision point for all envs: render, query the policy, execute Ta actions (inner scan)."""
    state = carry
    image = jax.vmap(env.render)(state)
    obs = {**state.obs, "image": image, "t": state.info["step"]}  # t: i32[N] control step (episode clock)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, q))(pol_keys)
    out = jax.vmap(functools.partial(_act_one, act), in_axes=(None, 0, 0, 0, None, 0))(
        params, obs, prompt_ids, keys, beta, act_kwargs
    )
    chunk, label = out if isinstance(out, tuple) else (out, out)
    for c in (chunk, label):
        if c.ndim != 3 or c.shape[1] < ta or c.shape[2] != env.action_size:
            raise ValueError(f"act must return f32[B, H >= {ta}, {env.action_size}] (or a pair of them), got {c.shape}")
    steps_in = jax.tree.map(lambda c: jnp.swapaxes(c[:, :ta].astype(jnp.float32), 0, 1), (chunk, label))
    state, (states, actions) = jax.lax.scan(functools.partial(_control_step, env), state, steps_in)
    out = (image, states, actions) if record else ()
    return state, out


def _control_step(env, state, action_label):
    """One control step of all envs; done envs keep their state. Executes ``action``, records (state before,
    ``label``): the same action, or the label chunk of an ``act`` that returns (execute, label)."""
    action, label = action_label
    new = jax.vmap(env.step)(state, action)
    new = _where_tree(state.done > 0, state, new)
    return new, (state.obs["state"], label)


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


def _wave(env, act: ActFn, ta: int, record: bool, params, prompt_ids, beta, key, ids, act_kwargs, state):
    """The closed loop from the reset states ``state`` (batched over the wave's N envs)."""
    n_queries = -(-int(env.config.episode_length) // ta)
    pol_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(_episode_keys(key, ids))
    body = functools.partial(_query_step, env, act, ta, record, params, prompt_ids, beta, act_kwargs, pol_keys)
    state, recs = jax.lax.scan(body, state, jnp.arange(n_queries))
    out = {
        "success": state.metrics["success"] > 0,
        "n_steps": state.info["step"].astype(jnp.int32),
        "cause": _failure_cause(state),
    }
    if record:
        image, states, actions = recs  # [Q, N, H, W, 3], [Q, Ta, N, 32], [Q, Ta, N, 36]
        n = ids.shape[0]
        out["images"] = jnp.swapaxes(image, 0, 1)
        out["states"] = jnp.moveaxis(states, 2, 0).reshape(n, n_queries * ta, -1)
        out["actions"] = jnp.moveaxis(actions, 2, 0).reshape(n, n_queries * ta, -1)
    return out


# The wave's two programs (see the module docstring for why the reset is its own).
_reset_jit = jax.jit(_reset, static_argnums=(0,))
_wave_jit = jax.jit(_wave, static_argnums=(0, 1, 2, 3))


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
) -> dict[str, jax.Array]:
    """Runs N episodes closed-loop on device (a reset program per env, a loop program per (env, act, ta, record)).

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

    Returns (device arrays): ``success`` bool [N], ``n_steps`` int32 [N], ``cause`` int8 [N] (index into
      ``FAILURE_CAUSES``), and with ``record``: ``images`` uint8 [N, Q, H, W, 3] (decision point q is control
      step q·Ta), ``states`` f32 [N, Q·Ta, 32] (state before each action), ``actions`` f32 [N, Q·Ta, 36].
      Entries at or past ``n_steps`` are padding.
    """
    if getattr(getattr(env, "config", None), "camera", False):
        raise ValueError("build the env with camera=False: the rollout renders only at decision points")
    if ta < 1:
        raise ValueError(f"ta must be >= 1, got {ta}")
    ids = jnp.asarray(ids, jnp.int32)
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if ids.ndim != 1 or prompt_ids.ndim != 2 or prompt_ids.shape[0] != ids.shape[0]:
        raise ValueError(f"need ids [N] and prompt_ids [N, L], got {ids.shape} and {prompt_ids.shape}")
    act_kwargs = {} if act_kwargs is None else dict(act_kwargs)
    state = _reset_jit(env, key, ids)
    beta = jnp.asarray(beta, jnp.float32)
    return _wave_jit(env, act, ta, record, params, prompt_ids, beta, key, ids, act_kwargs, state)


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

    def episodes(self, prompt: str, tags: Mapping[str, Any] | None = None) -> list[Episode]:
        """Converts each env's records to an ``Episode`` (only the valid prefix of every array)."""
        if self.states is None:
            raise ValueError("this wave was run with record=False")
        out = []
        for i, eid in enumerate(self.episode_ids):
            n = int(self.n_steps[i])
            q = -(-n // self.ta)  # decision points at steps 0, Ta, ... < n
            out.append(
                Episode(
                    episode_id=int(eid),
                    states=self.states[i, :n],
                    actions=self.actions[i, :n],
                    image_steps=(np.arange(q) * self.ta).astype(np.int32),
                    images=self.images[i, :q],
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
    env, act, params, ids: list[int], *, seed, namespace, num_envs, prompt, prompt_ids, beta, ta, record, act_kwargs
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
            run_wave(env, act, params, rows, beta, key, padded, ta=ta, record=record, act_kwargs=act_kwargs)
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
) -> dict[str, Any]:
    """Collects episodes ``first_id .. first_id + num_episodes − 1`` into ``store``, one ``append`` per wave.

    Ids already in the store are skipped (a restarted collection finishes exactly the missing ones, each
    with its own key), so afterwards the store holds every requested id exactly once.

    Args:
      env, act, params, beta, ta, act_kwargs: as ``run_wave``.
      store: ``recap_jax.data.EpisodeStore``.
      prompt: the bare instruction stored with each episode (and tokenised when ``prompt_ids`` is None).
      prompt_ids: int32 [L] (or [1, L]) ids given to the policy, e.g. an advantage-prefixed prompt.
      seed, first_id, namespace: episode i uses ``episode_key(seed, namespace, i)``.
      tags: merged into each episode's tags (``"kind": "rollout"`` by default; add "policy", "iteration").

    Returns: {"requested", "skipped", "collected", "successes", "success_rate"} (of the episodes collected now).
    """
    if num_episodes < 0 or first_id < 0:
        raise ValueError(f"need num_episodes >= 0 and first_id >= 0, got {num_episodes}, {first_id}")
    have = set(store.episode_ids())
    todo = [i for i in range(first_id, first_id + num_episodes) if i not in have]
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
) -> dict[str, np.ndarray]:
    """Evaluates a policy on the held-out episodes ``0 .. num_episodes − 1`` of the ``EVAL`` key namespace.

    The same (seed, num_episodes) gives every condition the same initial states, so results pair by index.

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
