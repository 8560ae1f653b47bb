"""The SIMPLE-protocol server, started for real with uvicorn on 127.0.0.1 (random free port)."""

import copy
import json
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _serve_helpers import running_server

from recap_jax import policy
from recap_jax.serve import codec
from recap_jax.serve.client import build_request, post
from recap_jax.serve.server import SimpleServer, parse_request

DATA = Path(__file__).parent / "data" / "simple_wire"


def _tiny_params():
    cfg = policy.PolicyConfig(image_size=(32, 32))
    return policy.init_policy(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def url():
    server = SimpleServer(_tiny_params(), advantage="high", max_batch=2, max_wait_ms=2.0)
    with running_server(server) as base:
        yield base, server


def _body(name):
    return json.loads((DATA / name).read_text())


def test_codec_roundtrip_and_golden_response():
    resp = _body("response.json")
    a = codec.decode_array(resp["action"], "action")
    assert a.dtype == np.float32 and a.shape == (24, 36)
    assert codec.encode_array(a) == resp["action"]
    assert codec.encode_array(np.zeros((1, 1, 3), np.uint8)) == resp["traj_image"]


def test_golden_requests_health_sessions(url):
    base, server = url
    import urllib.request

    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    first, later = _body("request_first.json"), _body("request_later.json")
    st, out = post(base + "/act", first)
    assert st == 200, out
    a = codec.decode_array(out["action"], "action")
    assert a.dtype == np.float32 and a.shape == (24, 36) and np.all(np.isfinite(a))
    assert out["err"] == 0.0 and codec.decode_array(out["traj_image"], "t").shape == (1, 1, 3)
    sid = first["history"]["session_id"]
    pre = server.sessions[sid]["prev_chunk"].copy()
    # a second interleaved session keeps its own RTC state
    other = copy.deepcopy(first)
    other["history"]["session_id"] = "other"
    other["history"]["episode_index"] = 9
    assert post(base + "/act", other)[0] == 200
    np.testing.assert_array_equal(server.sessions[sid]["prev_chunk"], pre)
    assert not np.array_equal(server.sessions["other"]["prev_chunk"], pre)
    st, out2 = post(base + "/act", later)
    assert st == 200 and codec.decode_array(out2["action"], "a").shape == (24, 36)
    assert server.sessions[sid]["t0"] == 0
    # replay with reset: same actions (determinism from seed, episode, step) and the prefix is cleared
    st, out3 = post(base + "/act", first)
    np.testing.assert_array_equal(codec.decode_array(out3["action"], "a"), a)
    np.testing.assert_array_equal(server.sessions[sid]["prev_chunk"], pre)  # reset dropped the later chunk's prefix
    # stateless request (no session id)
    req = parse_request(first)
    st, out4 = post(base + "/act", build_request(req.image, req.state, "Bend"))
    assert st == 200 and codec.decode_array(out4["action"], "a").shape == (24, 36)


def test_concurrent_clients_batched(url):
    base, _ = url
    body = _body("request_later.json")
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(base + "/act", body)[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 4


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda b: b.pop("condition"), "condition"),
        (lambda b: b["state"]["states"].update(dtype="<f8"), "state.states"),
        (lambda b: b["state"]["states"].update(shape=[1, 31]), "state.states"),
        (lambda b: b["image"]["rgb_head_stereo_left"].update(__numpy__="!!notb64"), "image.rgb_head_stereo_left"),
        (lambda b: b["state"].update(states=codec.encode_array(np.full((1, 32), np.nan, np.float32))), "non-finite"),
        (lambda b: b["history"].update(step_index="x"), "history.step_index"),
    ],
)
def test_bad_input_400_then_good(url, mutate, field):
    base, _ = url
    body = _body("request_later.json")
    mutate(body)
    st, out = post(base + "/act", body)
    assert st == 400 and field in out["error"], out
    assert post(base + "/act", _body("request_later.json"))[0] == 200


def test_malformed_json_400(url):
    base, _ = url
    st, out = post(base + "/act", b"{not json")
    assert st == 400 and "JSON" in out["error"]


def test_episode_clock_and_unknown_session():
    with pytest.raises(ValueError, match=r"config\.rtc is 'off'"):
        SimpleServer(policy.replace_config(_tiny_params(), rtc="off"), rtc=True)
    server = SimpleServer(_tiny_params(), max_batch=1)
    first, later = parse_request(_body("request_first.json")), parse_request(_body("request_later.json"))
    assert first.instruction == "bend to pick up the cracker box" and first.reset and not later.reset
    later.step_index = 124
    assert int(server._prepare(later)["t"]) == 0  # unknown session without reset: a new one starts here
    assert int(server._prepare(first)["t"]) == 0
    later.step_index = 48
    assert int(server._prepare(later)["t"]) == 48


def _study_run(root: Path) -> dict:
    """A tiny study run directory in ``experiments``' layout: config.json (smoke preset) and random-init policy
    checkpoints where the study keeps them (sft at steps 1 and ``sft.steps``, finetune/recap, finetune/bc_all),
    each policy from its own seed so a wrong pick is caught. Returns {(dir, step): saved params}."""
    import jax.numpy as jnp

    from experiments import common, finetune, glue
    from experiments.presets import get_preset
    from recap_jax.train import Checkpointer, OptimizerConfig, TrainState, make_optimizer

    cfg = get_preset("smoke")
    common.save_config(root, cfg)
    pcfg = glue.policy_config(cfg)
    tx = make_optimizer(OptimizerConfig.psi0(total_steps=10, warmup_steps=1))
    saved = {}
    for seed, (d, step) in enumerate(
        [("sft", 1), ("sft", cfg.sft.steps), (finetune.run_dir(0, "recap"), 3), (finetune.run_dir(0, "bc_all"), 2)]
    ):
        params = policy.init_policy(pcfg, jax.random.key(seed))
        state = TrainState.create(params, tx, jax.random.PRNGKey(0), mask=policy.trainable_mask)
        with Checkpointer(root / d, max_to_keep=5) as ckpt:
            ckpt.save(state.replace(step=jnp.asarray(step)), force=True)
        saved[(d, step)] = params
    return saved


def test_serve_study_run_dir(tmp_path):
    """``python -m recap_jax.serve --run-dir RUN --policy recap|bc_all|sft [--step N]`` loads the run's
    checkpoints read-only; the real CLI serves one over HTTP (subprocess, stopped after)."""
    import subprocess
    import sys
    import urllib.request

    import chex

    from experiments.presets import get_preset
    from recap_jax.serve import __main__ as cli

    run = tmp_path / "run"
    saved = _study_run(run)
    steps = get_preset("smoke").sft.steps
    for argv, key in (
        (["--policy", "recap"], ("finetune/recap", 3)),
        (["--policy", "bc_all"], ("finetune/bc_all", 2)),
        (["--policy", "sft"], ("sft", steps)),
        (["--policy", "sft", "--step", "1"], ("sft", 1)),
    ):
        got = cli.load_params(cli.parse_args(["--run-dir", str(run), *argv]))
        chex.assert_trees_all_equal(got.model, saved[key].model)
    server = cli.build_server(cli.parse_args(["--run-dir", str(run), "--max-batch", "2"]))
    assert server.advantage == "high" and server.rtc and server.params.config.rtc == "psi0"
    assert cli.build_server(cli.parse_args(["--run-dir", str(run), "--policy", "sft"])).advantage is None
    # read-only: a directory without config.json is named, and nothing is written into it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty/config\.json: missing"):
        cli.load_params(cli.parse_args(["--run-dir", str(empty)]))
    assert list(empty.iterdir()) == []
    with pytest.raises(ValueError, match=r"sft/checkpoints: no step 7 \(have \[1, " + str(steps) + r"\]\)"):
        cli.load_params(cli.parse_args(["--run-dir", str(run), "--policy", "sft", "--step", "7"]))
    (run / "finetune/bc_all").rename(tmp_path / "moved")
    with pytest.raises(ValueError, match=r"bc_all/checkpoints: no checkpoints"):
        cli.load_params(cli.parse_args(["--run-dir", str(run), "--policy", "bc_all"]))

    # the real CLI on 127.0.0.1, bounded in time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "recap_jax.serve", "--run-dir", str(run), "--policy", "sft", "--step", "1"]
    cmd += ["--port", str(port), "--max-batch", "1", "--no-warmup"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "server did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except OSError:
                time.sleep(0.5)
        st, out = post(f"http://127.0.0.1:{port}/act", _body("request_first.json"), timeout=240)
        assert st == 200, out
        a = codec.decode_array(out["action"], "action")
        assert a.shape == (get_preset("smoke").env.replan_every, 36) and np.all(np.isfinite(a))
    finally:
        proc.terminate()
        proc.wait(30)
    assert not list((run / "sft").glob("*.json")) and sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "finetune",
        "sft",
    ]
