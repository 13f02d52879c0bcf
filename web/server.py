"""Running the app under waitress: `cli.py serve` runs `make_server(...)`; tests use a background one."""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge

from .config import describe_size

_WAITRESS_CAP = 2  # waitress itself refuses bodies over this many times the app's limit


def make_server(app, host: str = "127.0.0.1", port: int = 8000, threads: int = 4,
                socket_map: dict | None = None):
    """Gives a waitress server bound to host:port (port 0: a free one); `.run()` serves until interrupted."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    sockets = socket_map if socket_map is not None else {}
    # waitress buffers a whole body (to disk past 1 MiB) before the app sees it, and turns a chunked
    # body into one with a Content-Length. Bodies up to twice the app's limit reach Flask, which
    # answers a JSON 413; waitress refuses larger ones itself (in JSON too), so that none fills the disk.
    server = waitress.create_server(app, host=host, port=port, threads=threads, ident="EmoReact",
                                    max_request_body_size=_WAITRESS_CAP * limit, map=sockets)
    for listener in list(sockets.values()):  # one per address that host resolves to
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = _JsonErrorChannel
    return server


class _JsonErrorTask(ErrorTask):
    """waitress's own refusals (a body over its cap, malformed HTTP) in the app's JSON error shape."""

    def execute(self) -> None:
        error = self.request.error
        if isinstance(error, RequestEntityTooLarge):
            limit = describe_size(self.channel.adj.max_request_body_size // _WAITRESS_CAP)
            message = f"the upload is larger than the limit of {limit} per request; send fewer or smaller images"
        else:
            message = f"{error.reason}: {error.body}"
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(HTTPChannel):
    error_task_class = _JsonErrorTask


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
        # Closed from inside the loop (a trigger thunk), never under its select(), which would fail on a
        # closed descriptor; with the map empty, run() returns.
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
        except OSError:  # the loop already closed its trigger and left select(): close directly
            wasyncore.close_all(sockets)
        thread.join(timeout=10)


@contextlib.contextmanager
def reload_on_sighup(app) -> Iterator[bool]:
    """While inside, each SIGHUP reloads the app's store and head; gives whether the handler is installed.

    A failed reload is logged and the previous store and head keep serving (see `Resources.reload`).
    Nothing is installed where there is no SIGHUP (Windows) or off the main thread, where Python
    allows no signal handlers. The previous handler is put back on exit.
    """
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        yield False
        return
    resources = app.extensions["emoreact"]

    def handle(signum, frame) -> None:
        # The handler runs on the main thread, which is waitress's accept loop: loading a model
        # there would stop new connections for seconds, so the reload gets a thread of its own.
        threading.Thread(target=resources.reload, name="emoreact-reload", daemon=True).start()

    previous = signal.signal(signal.SIGHUP, handle)
    try:
        yield True
    finally:
        signal.signal(signal.SIGHUP, previous)
