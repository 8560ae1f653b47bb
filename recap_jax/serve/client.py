"""A small client of SIMPLE's policy-server protocol (builds requests as SIMPLE's Ψ0 client does), and
``evaluate_remote``: closed-loop evaluation of our batched env through any SIMPLE-protocol server.

``evaluate_remote`` keeps the envs on device: per decision point one jitted program renders every env's
360×640 ego frame and reads its 32-d state (``obs["state"]``: measured hand/arm joints + the last commanded
torso roll/pitch/yaw/height, as SIMPLE's client builds it) and step; the live envs' requests go to the
server concurrently (one thread each); the returned chunks (each env's own length) are padded to one
[L, N, 36] block and a second jitted program executes them, a ``lax.scan`` over L control steps of
``vmap(env.step)`` that leaves an env untouched past the end of its chunk. Episode ``i`` is reset with the
same key as ``recap_jax.rollout.evaluate`` (``fold_in(episode_key(seed, namespace, i), 0)``), so remote and
in-process outcomes pair by episode.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import json
import os
import urllib.request
import uuid

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.serve.codec import decode_array, encode_array


def build_request(image, state, instruction, *, session_id=None, episode_index=0, step_index=0, reset=False) -> dict:
    """u8 [360, 640, 3] frame, f32 [32] state → SIMPLE's /act request dict (all eight keys)."""
    history = (
        {"camera": []}
        if session_id is None
        else {"session_id": session_id, "episode_index": episode_index, "step_index": step_index}
    )
    if reset and session_id is not None:
        history["reset"] = True
    return {
        "image": {"rgb_head_stereo_left": encode_array(np.asarray(image, np.uint8))},
        "instruction": instruction,
        "state": {"states": encode_array(np.asarray(state, np.float32).reshape(1, -1))},
        "history": history,
        "condition": {},
        "gt_action": [],
        "dataset_name": "simple",
        "timestamp": datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f"),
    }


def post(url: str, body: dict | bytes, timeout: float = 60.0) -> tuple[int, dict]:
    """POST ``body`` to ``url`` → (status, decoded JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def act(base_url: str, request: dict, timeout: float = 60.0) -> np.ndarray:
    """One /act query → f32 [Ta, 36]; raises on a non-200 status (as SIMPLE's client does)."""
    status, out = post(base_url.rstrip("/") + "/act", request, timeout)
    if status != 200:
        raise RuntimeError(f"/act returned {status}: {out}")
    return decode_array(out["action"], "action")


FRAME_SIZE = (360, 640)  # (H, W) of SIMPLE's rgb_head_stereo_left frame


def _observe(env, state):
    """Batched env state → (u8 [N, H, W, 3] frames, f32 [N, 32] states, i32 [N] steps, bool [N] done)."""
    return jax.vmap(env.render)(state), state.obs["state"], state.info["step"], state.done > 0


def _execute(env, state, actions, valid):
    """Executes f32 [L, N, 36] ``actions`` where bool [L, N] ``valid`` (a scan over the L control steps)."""
    from recap_jax import rollout

    def step(s, av):
        a, ok = av
        return rollout._where_tree(ok, jax.vmap(env.step)(s, a), s), None

    return jax.lax.scan(step, state, (actions, valid))[0]


_observe_jit = jax.jit(_observe, static_argnums=0)
_execute_jit = jax.jit(_execute, static_argnums=0)


def _bucket(n: int, multiple: int = 8) -> int:
    """Chunk lengths are padded up to a multiple of 8, so a server's usual Ta compiles one program."""
    return max(multiple, -(-n // multiple) * multiple)


def evaluate_remote(
    env,
    base_url: str,
    num_episodes: int,
    *,
    instruction: str,
    seed: int,
    namespace: int | None = None,
    num_envs: int = 8,
    timeout: float = 120.0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Evaluates the policy behind a SIMPLE-protocol server on episodes ``0 .. num_episodes − 1`` of
    ``rollout.evaluate``'s key space (``seed``, ``namespace``, default ``rollout.EVAL``).

    Requests are built as SIMPLE's Ψ0 client builds them (``build_request``): the env's ego frame, which must
    be 360×640 (build the env with ``image_size=FRAME_SIZE``), the 32-d state, the instruction, and
    ``history`` = {session_id "recap-<pid>-<hex>-<episode>", episode_index = the episode id, step_index = the
    env's control step, reset: true on the episode's first query}. Every returned action is executed, one
    per control step; an empty chunk ends the episode there (its outcome is the env's at that step: a
    timeout unless it succeeded or fell); a non-200 answer raises ``RuntimeError``, a chunk that is not
    [Ta, ``env.action_size``] raises ``ValueError``.

    Args:
      env: a ``G1BendPick``-like env (batched with vmap; ``render`` gives u8 [360, 640, 3]).
      base_url: e.g. "http://127.0.0.1:22085".
      num_envs: envs stepped together on device (and requests in flight at once).

    Returns: {"episode_ids" int64 [E], "success" bool [E], "n_steps" int32 [E], "cause" int8 [E] (index into
      ``rollout.FAILURE_CAUSES``)}: ``rollout.evaluate``'s format, in episode-id order.
    """
    from recap_jax import rollout

    size = (env.camera_scene.height, env.camera_scene.width)
    if size != FRAME_SIZE:
        raise ValueError(f"the env renders {size[0]}x{size[1]}; SIMPLE's frame is 360x640 (image_size={FRAME_SIZE})")
    if num_envs < 1 or num_episodes < 0:
        raise ValueError(f"need num_envs >= 1 and num_episodes >= 0, got {num_envs}, {num_episodes}")
    key = jax.random.fold_in(jax.random.key(seed), rollout.EVAL if namespace is None else namespace)
    run = f"recap-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ask = functools.partial(act, base_url, timeout=timeout)
    out = {"episode_ids": [], "success": [], "n_steps": [], "cause": []}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_episodes, desc="evaluate (remote)", unit="ep")
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_envs) as pool:
        for start in range(0, num_episodes, num_envs):
            ids = list(range(start, min(start + num_envs, num_episodes)))
            k = len(ids)
            padded = np.array(ids + [ids[-1]] * (num_envs - k), np.int32)
            state = rollout._reset_jit(env, key, jnp.asarray(padded))
            first = np.ones(k, bool)
            ended = np.zeros(k, bool)
            while True:
                frames, states, steps, done = jax.device_get(_observe_jit(env, state))
                live = [j for j in range(k) if not done[j] and not ended[j]]
                if not live:
                    break
                reqs = [
                    build_request(
                        frames[j],
                        states[j],
                        instruction,
                        session_id=f"{run}-{ids[j]}",
                        episode_index=ids[j],
                        step_index=int(steps[j]),
                        reset=bool(first[j]),
                    )
                    for j in live
                ]
                chunks = list(pool.map(ask, reqs))
                first[live] = False
                length = max(len(c) for c in chunks)
                if length == 0:
                    ended[live] = True
                    break
                block = np.zeros((_bucket(length), num_envs, env.action_size), np.float32)
                valid = np.zeros(block.shape[:2], bool)
                for j, c in zip(live, chunks):
                    if c.ndim != 2 or c.shape[1] != env.action_size:
                        raise ValueError(f"/act action: expected [Ta, {env.action_size}], got {list(c.shape)}")
                    if len(c) == 0:
                        ended[j] = True
                    block[: len(c), j], valid[: len(c), j] = c, True
                state = _execute_jit(env, state, jnp.asarray(block), jnp.asarray(valid))
            res = jax.device_get(
                {
                    "success": state.metrics["success"] > 0,
                    "n_steps": state.info["step"],
                    "cause": rollout._failure_cause(state),
                }
            )
            out["episode_ids"].append(np.asarray(ids, np.int64))
            for name in ("success", "n_steps", "cause"):
                out[name].append(np.asarray(res[name])[:k])
            if bar is not None:
                bar.update(k)
    if bar is not None:
        bar.close()
    dtypes = {"episode_ids": np.int64, "success": bool, "n_steps": np.int32, "cause": np.int8}
    return {n: (np.concatenate(v) if v else np.zeros(0)).astype(dtypes[n]) for n, v in out.items()}
