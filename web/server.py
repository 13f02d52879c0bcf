"""Running the app under waitress: `cli.py serve` runs `make_server(...)`; tests use a background one."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import waitress
from waitress import wasyncore


def make_server(app, host: str = "127.0.0.1", port: int = 8000, threads: int = 4,
                socket_map: dict | None = None):
    """Gives a waitress server bound to host:port (port 0: a free one); `.run()` serves until interrupted."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    # waitress buffers a whole body (to disk past 1 MiB) before the app sees it, and turns a chunked
    # body into one with a Content-Length. Bodies up to twice the app's limit reach Flask, which
    # answers a JSON 413; waitress refuses larger ones itself, so that none fills the disk.
    return waitress.create_server(app, host=host, port=port, threads=threads, ident="EmoReact",
                                  max_request_body_size=2 * limit,
                                  map=socket_map if socket_map is not None else {})


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", threads: int = 4) -> Iterator[str]:
    """Runs the app under waitress on a free port in a thread; gives its base URL; stops on exit."""
    sockets: dict = {}
    server = make_server(app, host, 0, threads, sockets)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.effective_port}"
    finally:
        server.task_dispatcher.shutdown()
        wasyncore.close_all(sockets)  # the listening socket and any open connection; run() then returns
        thread.join(timeout=10)
