"""SIMPLE-protocol policy server: ``python -m recap_jax.serve`` (``POST /act``, ``GET /health``)."""

from recap_jax.serve.server import (
    RequestError,
    SimpleServer,
    build_app,
    decode_array,
    encode_array,
    parse_request,
)

__all__ = ["RequestError", "SimpleServer", "build_app", "decode_array", "encode_array", "parse_request"]
