"""SIMPLE's numpy-in-JSON encoding: ``{"__numpy__": base64 raw C-order bytes, "dtype": descr, "shape": [...]}``."""

from __future__ import annotations

import base64
import binascii

import numpy as np


class RequestError(ValueError):
    """A malformed request; the message names the field (answered with HTTP 400)."""


def encode_array(x: np.ndarray) -> dict:
    """np.ndarray → {"__numpy__": str, "dtype": str, "shape": list[int]}."""
    x = np.ascontiguousarray(x)
    return {"__numpy__": base64.b64encode(x.tobytes()).decode("ascii"), "dtype": x.dtype.str, "shape": list(x.shape)}


def decode_array(obj, field: str) -> np.ndarray:
    """{"__numpy__", "dtype", "shape"} → np.ndarray; RequestError naming ``field`` on any malformation."""
    if not isinstance(obj, dict) or "__numpy__" not in obj:
        raise RequestError(f"{field}: expected an encoded numpy array {{'__numpy__', 'dtype', 'shape'}}")
    try:
        dtype = np.dtype(obj.get("dtype"))
    except TypeError as e:
        raise RequestError(f"{field}: bad dtype {obj.get('dtype')!r}") from e
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise RequestError(f"{field}: bad shape {shape!r}")
    data = obj["__numpy__"]
    if not isinstance(data, str):
        raise RequestError(f"{field}: __numpy__ must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{field}: undecodable base64 ({e})") from e
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise RequestError(f"{field}: {len(raw)} bytes do not match dtype {dtype.str} shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
