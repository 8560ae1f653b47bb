"""Evaluation through the policy server (``evaluate_remote`` / ``experiments.evaluate --policy-url``) against
in-process ``rollout.evaluate`` of the same smoke-config policy on the same held-out keys.

The real server runs under uvicorn on 127.0.0.1 (random free port, stopped after). The in-process side
calls the server's own per-request computation (``sample_row``: resize the 360×640 frame, sample) with the
server's noise key ``noise_key(seed, episode, step)``, on an env that renders the same 360×640 frame, so
the two evaluations must give the same per-episode outcomes, not only success rates within the Wilson
intervals.
"""

import jax
import numpy as np
import pytest
from _serve_helpers import running_server

from experiments import common, evaluate, glue
from experiments.presets import get_preset, override
from experiments.report import Outcomes
from recap_jax import policy, rollout, stats
from recap_jax.serve.client import FRAME_SIZE, evaluate_remote
from recap_jax.serve.server import SimpleServer, noise_key, sample_row

SEED = 7  # the server's noise seed
N = 4  # episodes (one wave)


def _cfg():
    # The smoke preset with 48-step episodes (2 queries each): the per-episode outcomes of both sides must be
    # identical whatever the length; the 360x640 frame is rendered and shipped over HTTP at every query, so the
    # 216-step episodes of the preset made this file the suite's slowest after the study smoke test.
    return override(get_preset("smoke"), **{"env.episode_length": 48})


def _params(cfg):
    return policy.init_policy(glue.policy_config(cfg), jax.random.key(3))


@pytest.fixture(scope="module")
def served():
    cfg = _cfg()
    params = _params(cfg)
    server = SimpleServer(params, advantage=None, rtc=False, max_batch=N, max_wait_ms=500.0, seed=SEED)
    with running_server(server, start_timeout=60, stop_timeout=30) as base:
        yield cfg, params, base, server


def _in_process(cfg, params):
    """rollout.evaluate of the same params on the same keys, through the server's own per-request code."""
    env = glue.make_env(cfg, image_size=FRAME_SIZE)
    prompt = glue.prompt_for(None)
    ids, mask = policy.tokenize(params.config, [prompt])

    def act(params, obs, prompt_ids, key, *, beta, episode, mask):
        del key, beta  # the server's noise: (seed, episode_index, step_index)
        t = obs["t"][0]
        k = noise_key(SEED, episode[0], t)
        return sample_row(params, obs["image"][0], obs["state"][0], t, prompt_ids[0], mask[0], k)[0][None]

    seed, namespace = glue.key_space(cfg, "eval")
    assert namespace == rollout.EVAL
    return rollout.evaluate(
        env,
        act,
        params,
        N,
        prompt=prompt,
        prompt_ids=ids,
        seed=seed,
        num_envs=N,
        ta=cfg.env.replan_every,
        act_kwargs={"episode": np.arange(N, dtype=np.int32), "mask": np.repeat(mask, N, 0)},
        progress=False,
    )


def test_http_evaluation_matches_in_process(served, tmp_path):
    cfg, params, url, server = served
    # the CLI: python -m experiments.evaluate --out RUN --policy-url URL --episodes N --num-envs N --save PATH,
    # RUN holding this config (the env's 48-step episodes and the key space are read from it, read only)
    run, path = tmp_path / "run", tmp_path / "remote.npz"
    common.save_config(run, cfg)
    before = sorted(p.name for p in run.iterdir())
    evaluate.main(
        ["--out", str(run), "--policy-url", url, "--episodes", str(N), "--num-envs", str(N), "--save", str(path)]
    )
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into --out
    remote = Outcomes.load(str(path))
    with np.load(path.with_name("remote_detail.npz")) as z:
        cause = z["cause"]
    assert remote.episodes == N and cause.dtype == np.int8
    # every episode ran: one session per episode, reset on its first query, the clock counted from it
    assert len(server.sessions) == N and all(s["t0"] == 0 for s in server.sessions.values())
    assert sorted(int(k.rsplit("-", 1)[1]) for k in server.sessions) == list(range(N))
    local = _in_process(cfg, params)
    np.testing.assert_array_equal(remote.success, local["success"])
    np.testing.assert_array_equal(remote.steps, local["n_steps"])
    np.testing.assert_array_equal(cause, local["cause"])
    assert np.all(remote.steps > 0)
    k_r, k_l = int(remote.success.sum()), int(local["success"].sum())
    lo_r, hi_r = stats.wilson_interval(k_r, N)
    lo_l, hi_l = stats.wilson_interval(k_l, N)
    assert lo_r <= k_l / N <= hi_r and lo_l <= k_r / N <= hi_l


def test_remote_needs_simple_frame(served):
    cfg, _, url, _ = served
    with pytest.raises(ValueError, match="360x640"):
        evaluate_remote(glue.make_env(cfg), url, 1, instruction="x", seed=0)
