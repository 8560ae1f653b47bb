"""Throughput of ``recap_jax.serve`` over HTTP: requests/s and p50/p99 latency for 1, 8 and 32 clients.

Starts the real server (uvicorn, 127.0.0.1, random free port) in-process with the smoke preset's
untrained policy, warms every padded batch size, then each client thread posts SIMPLE's golden
``request_later.json`` ``--requests`` times (its own session id). Usage:
``python benchmarks/serve_throughput.py [--clients 1 8 32] [--requests 8]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np
import uvicorn

from experiments import glue
from experiments.presets import get_preset
from recap_jax import policy
from recap_jax.serve.client import post
from recap_jax.serve.server import SimpleServer, build_app

BODY = Path(__file__).resolve().parents[1] / "tests" / "data" / "simple_wire" / "request_later.json"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)
    args = p.parse_args()
    params = policy.init_policy(glue.policy_config(get_preset("smoke")), jax.random.key(0))
    server = SimpleServer(params, advantage="high", max_batch=args.max_batch, max_wait_ms=5.0)
    t0 = time.perf_counter()
    server.warmup()
    print(f"warm-up {time.perf_counter() - t0:.1f} s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(build_app(server), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/act"
    base = json.loads(BODY.read_text())
    for n in args.clients:
        lat: list[float] = []

        def client(i: int, n: int = n, lat: list = lat) -> None:
            body = copy.deepcopy(base)
            body["history"]["session_id"] = f"bench-{n}-{i}"
            for _ in range(args.requests):
                t = time.perf_counter()
                st, _ = post(url, body, timeout=120)
                assert st == 200
                lat.append(time.perf_counter() - t)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        ms = np.asarray(lat) * 1000
        print(
            f"clients {n:3d}: {len(lat) / wall:7.1f} req/s  "
            f"p50 {np.percentile(ms, 50):7.1f} ms  p99 {np.percentile(ms, 99):7.1f} ms"
        )
    uv.should_exit = True


if __name__ == "__main__":
    main()
