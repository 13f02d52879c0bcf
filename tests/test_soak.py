"""The soak bench: its clients' mix of valid and hostile uploads finds no 5xx, against the app in process
(fast) and against a real `cli.py serve` whose output (an access log line per request) never blocks it."""
from __future__ import annotations

import os

import pytest

PIPE_CAPACITY = 64 * 1024  # a Linux pipe's default buffer: what an unread stderr pipe holds before writes block
MiB = 1024 * 1024


def test_the_soak_clients_get_every_answer_right_from_the_app_in_process(store_path, linear_head,
                                                                        session_backbone_loader):
    from emoreact.bench.soak import send_load
    from emoreact.web import WebConfig, background_server, create_app

    app = create_app(WebConfig(store=store_path, head=linear_head, device="cpu", max_upload_bytes=MiB,
                               loader=session_backbone_loader))
    with background_server(app, threads=3) as base:
        result = send_load(int(base.rsplit(":", 1)[1]), os.getpid(), seconds=1, clients=3, max_upload_mb=1,
                           timeout=30)
    assert result["passed"], result
    assert result["requests"] > 0 and result["server_errors_5xx"] == 0 and result["dropped_connections"] == 0
    assert set(result["by_status"]) <= {"200", "400", "413", "415"}, result["by_status"]


@pytest.mark.subprocess
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
