"""A small client of SIMPLE's policy-server protocol (builds requests as SIMPLE's Ψ0 client does)."""

from __future__ import annotations

import datetime
import json
import urllib.request

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
