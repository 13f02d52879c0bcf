"""The soak bench against a real `cli.py serve`: every request answered, none with a 5xx, and the server's
output (an access log line per request) never blocks it."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.subprocess

PIPE_CAPACITY = 64 * 1024  # a Linux pipe's default buffer: what an unread stderr pipe holds before writes block


def test_a_short_soak_answers_every_request_and_the_server_log_never_blocks_it(store_path, linear_head, tmp_path):
    from emoreact.bench.soak import soak

    log = tmp_path / "serve.log"
    result = soak(store_path, linear_head, log, seconds=3, clients=4, max_upload_mb=1, timeout=30)
    assert result["passed"], result
    assert result["requests"] > 0 and result["server_errors_5xx"] == 0 and result["dropped_connections"] == 0
    assert result["answers_after_soak"] and not result["first_problems"]
    # The server wrote more than a pipe holds: piped and never read (as the soak once did), it would have
    # blocked on a log line and this soak would have hung.
    access = [line for line in log.read_text().splitlines() if "emoreact.access" in line]
    assert len(access) > result["requests"]  # every request of the soak, the reference answers too
    assert log.stat().st_size > PIPE_CAPACITY
