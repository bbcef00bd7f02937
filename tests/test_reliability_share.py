"""Share link and login: --share refuses to start without a login unless forced with --share-without-auth;
with a login, wrong or missing credentials are rejected on every door (the page, the API client, the raw queue),
and the right ones get through. No internet here: the tunnel fails and the app says so and keeps serving."""
from __future__ import annotations

import time

import httpx
import pytest

from reliability_support import server
from ui_support import CliProcess, free_port

DEAD_TUNNEL = {"GRADIO_SHARE_SERVER_ADDRESS": "127.0.0.1:9"}   # nothing listens there: the tunnel fails at once


def test_share_refuses_without_a_login_unless_forced():
    refused = CliProcess("--share", "--no-preload", "--port", str(free_port()))
    assert refused.proc.wait(120) == 2
    assert "refusing to --share without a login" in refused.wait_for(["refusing"], 10)
    with server("--share", "--share-without-auth", "--no-preload", env=DEAD_TUNNEL) as srv:
        # forced: it starts, open to anyone (no login), and says the link could not be made
        assert "refusing" not in srv.output
        assert httpx.get(srv.url + "config", timeout=30).status_code == 200
        for _ in range(600):
            if "Could not create the public share link" in srv.output:
                break
            time.sleep(0.1)
        assert "Could not create the public share link" in srv.output
        assert srv.proc.poll() is None


def test_wrong_or_missing_credentials_are_rejected_by_the_api():
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    with server("--auth", "alice:s3cret", "--no-preload") as srv:
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("", "")):
            with pytest.raises(Exception) as info:
                Client(srv.url, auth=auth, verbose=False)
            assert not isinstance(info.value, AppError)
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            assert http.get("/config").status_code == 401
            join = http.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"})
            assert join.status_code == 401
            assert http.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
        client = Client(srv.url, auth=("alice", "s3cret"), verbose=False)
        with pytest.raises(AppError, match="unknown variant 'int3'"):    # inside: the endpoint answers
            client.predict(model="smollm2-135m-instruct", variant="int3", message="hi", api_name="/chat")
