"""A real uvicorn server for a ``SimpleServer`` on a free 127.0.0.1 port, in a thread, bounded in time."""

import contextlib
import socket
import threading
import time

from recap_jax.serve.server import build_app


@contextlib.contextmanager
def running_server(server, *, start_timeout: float = 30.0, stop_timeout: float = 10.0):
    """Yields the server's base URL; asserts that it started and, on exit, that it stopped."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(build_app(server), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=uv.run, daemon=True)
    th.start()
    deadline = time.time() + start_timeout
    while not uv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        th.join(stop_timeout)
    assert not th.is_alive(), "server did not stop"
