"""Share link and login: --share refuses to start without a login unless forced with --share-without-auth;
with a login, wrong or missing credentials are rejected on every door (the page, the API client, the raw queue),
and the right ones get through. No internet here: the tunnel fails and the app says so and keeps serving."""
from __future__ import annotations

import re
import time

import httpx
import pytest

from reliability_support import server
from ui_support import CliProcess, free_port

DEAD_TUNNEL = {"GRADIO_SHARE_SERVER_ADDRESS": "127.0.0.1:9"}   # nothing listens there: the tunnel fails at once


def test_share_refuses_without_a_login_unless_forced():
    from launch import AUTH_HINT
    refused = CliProcess("--share", "--no-preload", "--port", str(free_port()))
    assert refused.proc.wait(120) == 2
    out = refused.wait_for(["refusing"], 10)
    assert f"launch.py: refusing to --share without a login.\n{AUTH_HINT}" in out, out
    assert "Running on" not in out and "Traceback" not in out    # refused before building or serving anything
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
    from gradio_client.exceptions import AppError, AuthenticationError
    with server("--auth", "alice:s3cret", "--no-preload") as srv:
        # no login: the config route answers 401, which the client reports as "credentials were not provided";
        # a wrong login: /login answers 400 "Incorrect credentials." (422 for an empty form), "Could not login"
        no_login = (AuthenticationError, r"as credentials were not provided\. Please login\.")
        bad_login = (ValueError, rf"^Could not login to {re.escape(srv.url)}\.$")
        for auth, (kind, message) in ((None, no_login), (("alice", "wrong"), bad_login),
                                      (("mallory", "s3cret"), bad_login), (("", ""), bad_login)):
            with pytest.raises(kind, match=message) as info:
                Client(srv.url, auth=auth, verbose=False)
            assert type(info.value) is kind, (auth, repr(info.value))   # not an AppError: nothing ran inside
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            assert http.get("/config").status_code == 401
            join = http.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"})
            assert join.status_code == 401
            wrong = http.post("/login", data={"username": "alice", "password": "wrong"})
            assert wrong.status_code == 400 and wrong.json() == {"detail": "Incorrect credentials."}
        client = Client(srv.url, auth=("alice", "s3cret"), verbose=False)
        with pytest.raises(AppError, match="unknown variant 'int3'"):    # inside: the endpoint answers
            client.predict(model="smollm2-135m-instruct", variant="int3", message="hi", api_name="/chat")
