"""Sessions are isolated: one user's history, system prompt, model/variant choice and Stop button never reach
another's. Two browser sessions (Playwright, headless Chromium) on one ``launch.py`` server; the API side of the
same property (16 concurrent sessions, each prompt counted from that session's own history only) is checked by
the load test in test_reliability_load.py."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from reliability_support import server
from test_ui_browser import REPLY_TIMEOUT, badges, bot, open_app, send, set_params, user
from ui_support import browser

SECRET_SYSTEM = "You are Captain Nemo. Always mention the Nautilus."
SECRET = "My secret word is PINEAPPLE."
DEFAULT_SYSTEM = "You are a helpful assistant."
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv():
    with server("--device", "cpu") as s:
        yield s


def prompt_tokens(pg) -> int:
    return int(re.search(r"last reply: (\d+) prompt tokens", pg.locator("#chat-status").inner_text()).group(1))


def pick(pg, elem: str, value: str) -> None:
    pg.locator(f"#{elem} input").click()
    pg.locator(f'#{elem} li[aria-label="{value}"]').click()
    expect(pg.locator(f"#{elem} input")).to_have_value(value)


def test_history_system_prompt_model_choice_and_stop_stay_in_their_session(srv):
    with browser() as b:
        a = open_app(b.new_context(viewport={"width": 1300, "height": 950}).new_page(), srv.url)
        c = open_app(b.new_context(viewport={"width": 1300, "height": 950}).new_page(), srv.url)
        # the baseline: a fresh conversation's prompt length in session C
        set_params(c, "chat", 4)
        send(c, "What is my secret word?")
        expect(badges(c)).to_have_count(1, timeout=REPLY_TIMEOUT)
        fresh = prompt_tokens(c)
        c.locator("#chat-clear").click()
        expect(user(c)).to_have_count(0)

        # session A: its own system prompt, another variant (loaded), a secret in its history
        a.locator("#chat-system textarea").fill(SECRET_SYSTEM)
        pick(a, "chat-variant", "fp32")
        a.locator("#chat-load").click()
        # the load bar's lines name the model too ("◔ Loading … [fp32]"): wait for the loaded line
        expect(a.locator("#chat-status")).to_contain_text("✓ Loaded: smollm2-135m-instruct [fp32]",
                                                         timeout=REPLY_TIMEOUT)
        set_params(a, "chat", 4)
        send(a, SECRET)
        expect(badges(a)).to_have_count(1, timeout=REPLY_TIMEOUT)
        expect(badges(a).first).to_contain_text("fp32")

        # session C sees none of it: its widgets, its replies, what its model was given
        expect(c.locator("#chat-system textarea")).to_have_value(DEFAULT_SYSTEM)
        expect(c.locator("#chat-variant input")).to_have_value("bf16")
        send(c, "What is my secret word?")
        expect(badges(c)).to_have_count(1, timeout=REPLY_TIMEOUT)
        expect(badges(c).first).to_contain_text("bf16")
        assert prompt_tokens(c) == fresh, "session C's prompt held more than its own conversation"
        for text in ("PINEAPPLE", "Nemo"):
            assert text not in c.locator("#chat-chatbot").inner_text()
        expect(user(c)).to_have_count(1)

        # Stop in session A does not stop session C's reply
        set_params(c, "chat", 48)
        send(c, "Write a long story about a dragon.")
        c.wait_for_function("""() => {
            const b = document.querySelectorAll('#chat-chatbot [data-testid="bot"]');
            return b.length === 2 && b[1].innerText.trim().length > 0 && b[1].innerText.trim() !== '…'; }""",
                            timeout=REPLY_TIMEOUT)
        a.locator("#chat-stop").click()
        expect(badges(c)).to_have_count(2, timeout=REPLY_TIMEOUT)
        assert "stopped" not in badges(c).last.inner_text()
        assert int(re.search(r"(\d+) tokens", badges(c).last.inner_text()).group(1)) > 1

        # and A's conversation is still its own
        expect(user(a)).to_have_count(1)
        expect(user(a)).to_have_text(SECRET)
        expect(a.locator("#chat-system textarea")).to_have_value(SECRET_SYSTEM)
        expect(bot(a)).to_have_count(1)
