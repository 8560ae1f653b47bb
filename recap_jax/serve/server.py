"""The SIMPLE-protocol policy server: request parsing, per-session state and micro-batched sampling.

Protocol (PSI0_FACTS.md "The SIMPLE policy-server protocol"): ``POST /act`` with eight keys (image,
instruction, state, history, condition, gt_action, dataset_name, timestamp) → ``{"action": f32 [Ta, 36],
"err": 0.0, "traj_image": u8 [1, 1, 3]}``; ``GET /health`` → ``{"status": "ok"}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from recap_jax import policy
from recap_jax.advantage import format_prompt, instruction_text
from recap_jax.serve.codec import RequestError, decode_array, encode_array

log = logging.getLogger("recap_jax.serve")

REQUEST_KEYS = ("image", "instruction", "state", "history", "condition", "gt_action", "dataset_name", "timestamp")
FRAME_SHAPE = (360, 640, 3)
STATE_DIM = 32


@dataclasses.dataclass
class Request:
    """One parsed /act request: image u8 [360, 640, 3], state f32 [32], instruction str, history fields."""

    image: np.ndarray
    state: np.ndarray
    instruction: str
    session_id: str | None
    reset: bool
    episode_index: int
    step_index: int


def _int(history: dict, name: str, default: int) -> int:
    v = history.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"history.{name}: expected an int, got {type(v).__name__}")
    return v


def parse_request(body: bytes | str | dict) -> Request:
    """Raw /act body → Request; RequestError naming the field on any malformation."""
    if not isinstance(body, dict):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"body: malformed JSON ({e})") from e
    if not isinstance(body, dict):
        raise RequestError("body: expected a JSON object")
    for k in REQUEST_KEYS:
        if k not in body:
            raise RequestError(f"{k}: missing key")
    if not isinstance(body["image"], dict) or "rgb_head_stereo_left" not in body["image"]:
        raise RequestError("image.rgb_head_stereo_left: missing key")
    image = decode_array(body["image"]["rgb_head_stereo_left"], "image.rgb_head_stereo_left")
    if image.dtype != np.uint8 or image.shape != FRAME_SHAPE:
        raise RequestError(
            f"image.rgb_head_stereo_left: expected uint8 {list(FRAME_SHAPE)}, got {image.dtype.str} {list(image.shape)}"
        )
    if not isinstance(body["state"], dict) or "states" not in body["state"]:
        raise RequestError("state.states: missing key")
    state = decode_array(body["state"]["states"], "state.states")
    if state.dtype != np.float32 or state.shape != (1, STATE_DIM):
        raise RequestError(
            f"state.states: expected float32 [1, {STATE_DIM}], got {state.dtype.str} {list(state.shape)}"
        )
    if not np.all(np.isfinite(state)):
        raise RequestError("state.states: non-finite values")
    instruction = body["instruction"]
    if not isinstance(instruction, str):
        raise RequestError("instruction: expected a str")
    history = body["history"]
    if not isinstance(history, dict):
        raise RequestError("history: expected an object")
    sid = history.get("session_id")
    if sid is not None and not isinstance(sid, str):
        raise RequestError("history.session_id: expected a str")
    reset = history.get("reset", False)
    if not isinstance(reset, bool):
        raise RequestError("history.reset: expected a bool")
    return Request(
        image=image,
        state=state[0],
        instruction=instruction_text(instruction) or "bend to pick up the object",
        session_id=sid,
        reset=reset,
        episode_index=_int(history, "episode_index", 0),
        step_index=_int(history, "step_index", 0),
    )


def noise_key(seed: int, episode_index, step_index) -> jax.Array:
    """The sampling key of one query: ``fold_in(fold_in(key(seed), episode_index), step_index)`` (a replayed
    episode gets the same actions, whatever its session id or batch-mates)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), episode_index), step_index)


def sample_row(params, image, state, t, ids, mask, key, prev_chunk=None) -> tuple[jax.Array, jax.Array]:
    """The server's computation for one request (vmapped over a batch): resize the frame to the policy's
    input, then sample a chunk with ``policy.sample_actions_rtc`` (the rollout's code path).

    Args: image u8 [360, 640, 3]; state f32 [32]; t i32 [] (episode clock, used when ``phase_steps``);
      ids i32 [L] / mask bool [L] (the tokenised prompt); key: PRNG key (``noise_key``); prev_chunk: f32 [H, 36]
      the session's previous chunk, normalised as the sampler made it (its [Ta:] is the RTC prefix), or None.
    Returns: (f32 [H, 36] absolute actions, f32 [H, 36] the same chunk normalised, to keep as ``prev_chunk``).

    The frame is resized with ``jax.image.resize(..., "linear")`` (antialiased when shrinking) and rounded
    back to uint8, so the policy sees the dtype the camera gives it.
    """
    cfg = params.config
    img = jax.image.resize(image.astype(jnp.float32), (*cfg.image_size, 3), "linear")
    obs = {"state": state[None], "image": jnp.clip(jnp.round(img), 0, 255).astype(jnp.uint8)[None]}
    if cfg.phase_steps:
        obs["t"] = t[None]
    pre = None if prev_chunk is None else prev_chunk[None]
    actions, chunk = policy.sample_actions_rtc(params, obs, ids[None], key, prev_chunk=pre, prompt_mask=mask[None])
    return actions[0], chunk[0]


def _sizes(max_batch: int) -> tuple[int, ...]:
    out, s = [], 1
    while s < max_batch:
        out.append(s)
        s *= 2
    return (*out, max_batch)


class SimpleServer:
    """Per-session state + micro-batched jitted sampling for one policy.

    Args:
      params: ``PolicyParams``. advantage: "high" | "low" | None (prompt indicator). rtc: a session's
      previous chunk (normalised, as the sampler made it) fed back as ``prev_chunk`` to
      ``policy.sample_actions_rtc`` (True: its [Ta:] is the clean prefix when ``config.rtc`` is not "off";
      the same code path as the rollout) or none. max_batch, max_wait_ms: batching. seed: noise seed;
      row noise = fold_in(fold_in(key(seed), episode_index), step_index). session_ttl_s: idle expiry.
    """

    def __init__(self, params, *, advantage=None, rtc=True, max_batch=32, max_wait_ms=5.0, seed=0, session_ttl_s=600.0):
        if rtc and params.config.rtc == "off":
            raise ValueError(
                "rtc=True passes each session's previous chunk as a prefix, but the policy's config.rtc is 'off'"
            )
        self.params, self.cfg = params, params.config
        self.advantage, self.rtc = advantage, rtc
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.sizes = _sizes(max_batch)
        self.seed, self.ttl = seed, session_ttl_s
        self.sessions: dict[str, dict] = {}
        self.queue: asyncio.Queue | None = None
        self._worker = None
        one = functools.partial(sample_row, params)
        self._fn_plain = jax.jit(jax.vmap(lambda *a: one(*a, None)))
        self._fn_prefix = jax.jit(jax.vmap(one))

    # ---- sessions --------------------------------------------------------------------------------
    def _session(self, req: Request) -> dict | None:
        now = time.monotonic()
        for sid in [s for s, v in self.sessions.items() if now - v["seen"] > self.ttl]:
            del self.sessions[sid]
        if req.session_id is None:
            return None
        sess = self.sessions.get(req.session_id)
        if req.reset or sess is None:
            if sess is None and not req.reset:
                log.warning("unknown session %r without reset: starting a new one", req.session_id)
            sess = {"t0": req.step_index, "prev_chunk": None}
            self.sessions[req.session_id] = sess
        sess["seen"] = now
        return sess

    def _prepare(self, req: Request) -> dict:
        sess = self._session(req)
        t = req.step_index - sess["t0"] if sess is not None else 0
        ids, mask = policy.tokenize(self.cfg, [format_prompt(req.instruction, self.advantage)])
        key = noise_key(self.seed, req.episode_index, req.step_index)
        prefix = sess["prev_chunk"] if (sess is not None and self.rtc) else None
        return dict(
            img=req.image,
            state=req.state,
            t=np.int32(max(t, 0)),
            ids=ids[0],
            mask=mask[0],
            key=jax.random.key_data(key),
            prefix=prefix,
            sess=sess,
        )

    def run_batch(self, items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Samples one padded batch (all with or all without a previous chunk, item "prefix") → list of
        (absolute chunk f32 [H, 36], normalised chunk f32 [H, 36])."""
        n = len(items)
        size = next(s for s in self.sizes if s >= n)
        pad = items + [items[0]] * (size - n)
        args = [np.stack([it[k] for it in pad]) for k in ("img", "state", "t", "ids", "mask", "key")]
        args[5] = jax.random.wrap_key_data(jnp.asarray(args[5]))
        if pad[0]["prefix"] is None:
            out = self._fn_plain(*args)
        else:
            out = self._fn_prefix(*args, np.stack([it["prefix"] for it in pad]))
        actions, chunks = (np.asarray(x, np.float32) for x in out)
        return list(zip(actions[:n], chunks[:n]))

    def warmup(self) -> None:
        """Compiles every padded size for both paths (no recompiles afterwards)."""
        dummy = dict(
            img=np.zeros(FRAME_SHAPE, np.uint8),
            state=np.zeros(STATE_DIM, np.float32),
            t=np.int32(0),
            ids=np.zeros(self.cfg.prompt_max_len, np.int32),
            mask=np.ones(self.cfg.prompt_max_len, bool),
            key=jax.random.key_data(jax.random.key(0)),
            prefix=None,
        )
        pre = np.zeros((self.cfg.chunk, self.cfg.action_dim), np.float32)
        for s in self.sizes:
            self.run_batch([dummy] * s)
            if self.rtc:
                self.run_batch([dict(dummy, prefix=pre)] * s)

    # ---- batching --------------------------------------------------------------------------------
    async def act(self, req: Request) -> np.ndarray:
        """Request → f32 [Ta, 36] absolute actions; updates the session's RTC prefix."""
        if self._worker is None:
            self.queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        item = self._prepare(req)
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((item, fut))
        chunk, normalised = await fut
        if item["sess"] is not None:
            item["sess"]["prev_chunk"] = normalised
        return chunk[: self.cfg.execute]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            for has_prefix in (False, True):
                group = [b for b in batch if (b[0]["prefix"] is not None) == has_prefix]
                if not group:
                    continue
                try:
                    outs = await loop.run_in_executor(None, self.run_batch, [g[0] for g in group])
                    for (_, fut), o in zip(group, outs):
                        fut.set_result(o)
                except Exception as e:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)


def response_body(chunk: np.ndarray) -> dict:
    """f32 [Ta, 36] → SIMPLE's response dict."""
    return {
        "action": encode_array(np.asarray(chunk, np.float32)),
        "err": 0.0,
        "traj_image": encode_array(np.zeros((1, 1, 3), np.uint8)),
    }


def build_app(server: SimpleServer):
    """FastAPI app with ``POST /act`` and ``GET /health``."""
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/act")
    async def act(http: HttpRequest):
        try:
            req = parse_request(await http.body())
        except RequestError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        try:
            chunk = await server.act(req)
        except Exception as e:
            log.exception("internal error")
            return JSONResponse({"error": f"internal error: {e}"}, status_code=500)
        return JSONResponse(response_body(chunk))

    return app


__all__ = [
    "RequestError",
    "SimpleServer",
    "build_app",
    "decode_array",
    "encode_array",
    "noise_key",
    "parse_request",
    "sample_row",
]
