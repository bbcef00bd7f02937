"""The web UI in a real browser (Playwright + headless Chromium) against the real app and model.

One server per module (smollm2-135m-instruct bf16 preloaded), greedy decoding and short replies. Every wait is
on a condition in the page (Playwright's ``expect`` retries until its timeout), not a fixed sleep. Screenshots of
each tab go to $PLAYGROUND_SCREENS (default /tmp/screens).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from ui_support import DEFAULT_MODEL, browser, running_app

from playwright.sync_api import Page, expect  # noqa: E402  (requirements-dev.txt)
from page_support import badges, bot, open_app, send, set_params, user  # noqa: E402

FRANCE = "What is the capital of France?"
CHEF = "你是一位经验丰富的厨师，回答时先列出所需食材，再分步骤说明做法。"
SCREENS = Path(os.environ.get("PLAYGROUND_SCREENS", "/tmp/screens"))
REPLY_TIMEOUT = 120_000  # ms; generous: 2 shared CPU cores


@pytest.fixture(scope="module")
def server():
    with running_app() as (url, app, manager):
        yield url, app, manager


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium, server):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    open_app(pg, server[0])
    yield pg
    context.close()


def screenshot(pg: Page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def wait_for_new_badge(pg: Page, old: str) -> None:
    """Wait until the last reply carries a badge other than ``old`` (a new reply finished)."""
    pg.wait_for_function("""(old) => {
        const b = document.querySelectorAll('#chat-chatbot .reply-badge');
        return b.length > 0 && b[b.length - 1].innerText !== old; }""", arg=old, timeout=REPLY_TIMEOUT)


def no_error_toast(pg: Page) -> None:
    expect(pg.locator('[data-testid="toast-body"].error')).to_have_count(0)


BADGE = re.compile(r"TTFT \d+ ms · [\d.]+ tok/s · \d+ tokens · peak [\d.]+ GB \(process RSS\) · bf16")


def test_chat_streams_the_answer_with_a_badge(page):
    set_params(page, "chat", 24)
    send(page, FRANCE)
    expect(user(page)).to_have_text(FRANCE)
    expect(input_box := page.locator("#chat-input textarea")).to_have_value("")
    expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
    expect(bot(page).last).to_contain_text("Paris")
    expect(badges(page).first).to_have_text(BADGE)
    status = page.locator("#chat-status")
    expect(status).to_contain_text("smollm2-135m-instruct [bf16]")
    fresh = re.search(r"last reply: (\d+) prompt tokens", status.inner_text()).group(0)
    no_error_toast(page)
    screenshot(page, "chat")
    # Undo puts the question back in the box; Regenerate answers the same question again
    page.locator("#chat-undo").click()
    expect(bot(page)).to_have_count(0)
    expect(input_box).to_have_value(FRANCE)
    send(page, FRANCE)
    expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
    old_badge = badges(page).first.inner_text()
    page.locator("#chat-regenerate").click()
    wait_for_new_badge(page, old_badge)
    expect(bot(page)).to_have_count(1)
    expect(bot(page).last).to_contain_text("Paris")
    # the Chatbot's own trash icon clears the conversation the model sees too, not just the display
    page.locator('#chat-chatbot button[aria-label="Clear"]').click()
    expect(user(page)).to_have_count(0)
    send(page, FRANCE)
    expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
    expect(user(page)).to_have_count(1)
    expect(status).to_contain_text(fresh)          # same prompt length as a fresh conversation
    page.locator("#chat-clear").click()
    expect(user(page)).to_have_count(0)


def test_stop_ends_a_long_reply_and_the_model_answers_again(page):
    set_params(page, "chat", 400)
    send(page, "Write a long story about a dragon who learns to fly.")
    page.wait_for_function("""() => {
        const b = document.querySelectorAll('#chat-chatbot [data-testid="bot"]');
        return b.length && b[b.length - 1].innerText.length > 40; }""", timeout=REPLY_TIMEOUT)
    page.locator("#chat-stop").click()
    expect(badges(page)).to_have_count(1, timeout=30_000)
    expect(badges(page).first).to_contain_text("stopped")
    tokens = int(re.search(r"(\d+) tokens", badges(page).first.inner_text()).group(1))
    assert 0 < tokens < 400
    stopped_text = bot(page).last.inner_text()
    time.sleep(1.5)  # the reply is final: it must not grow any more
    assert bot(page).last.inner_text() == stopped_text
    set_params(page, "chat", 24)
    send(page, FRANCE)
    expect(badges(page)).to_have_count(2, timeout=REPLY_TIMEOUT)
    expect(bot(page).last).to_contain_text("Paris")
    no_error_toast(page)


def test_empty_message_warns_without_an_error(page):
    page.locator("#chat-send").click()
    toast = page.locator('[data-testid="toast-body"].warning')
    expect(toast).to_contain_text("The message is empty")
    no_error_toast(page)
    expect(user(page)).to_have_count(0)
    page.locator("#chat-input textarea").fill("   ")
    page.locator("#chat-input textarea").press("Enter")
    expect(toast.first).to_be_visible()
    expect(page.locator("#chat-input textarea")).to_be_visible()
    no_error_toast(page)
    expect(user(page)).to_have_count(0)


def test_enter_sends_and_shift_enter_adds_a_line(page):
    """As the box says: Shift+Enter makes a new line and sends nothing; Enter sends (both lines, one message).
    Gradio's multi-line boxes do the opposite: the box is a one-line box that grows."""
    set_params(page, "chat", 8)
    box = page.locator("#chat-input textarea")
    box.fill("What is the capital")
    box.press("Shift+Enter")
    box.type("of France?")
    expect(box).to_have_value("What is the capital\nof France?")
    expect(user(page)).to_have_count(0)
    box.press("Enter")
    expect(user(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
    expect(user(page).first).to_contain_text("of France?")
    expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
    expect(box).to_have_value("")
    no_error_toast(page)


def test_compare_prompt_runs_on_enter(page):
    page.get_by_role("tab", name="Compare").click()
    set_params(page, "compare", 8)
    box = page.locator("#compare-prompt textarea")
    box.fill("What is the capital")
    box.press("Shift+Enter")
    expect(box).to_have_value("What is the capital\n")
    expect(page.locator("#compare-status")).not_to_contain_text("done")
    box.type("of France?")
    box.press("Enter")
    expect(page.locator("#compare-badge-1 .reply-badge")).to_contain_text("tok/s", timeout=REPLY_TIMEOUT)
    expect(page.locator("#compare-status")).to_contain_text("done")
    no_error_toast(page)


def test_unknown_model_shows_an_error_and_the_app_keeps_serving(page):
    model = page.locator("#chat-model input")
    model.fill("./no/such/model")
    model.press("Enter")
    expect(page.locator("#chat-status")).to_contain_text("is not loaded")
    send(page, "hello")
    expect(page.locator('[data-testid="toast-body"].error')).to_contain_text("no such folder",
                                                                             timeout=30_000)
    expect(page.locator("#chat-input textarea")).to_have_value("hello")  # the message is given back
    expect(user(page)).to_have_count(0)
    model.fill(DEFAULT_MODEL)
    model.press("Enter")
    expect(page.locator("#chat-status")).to_contain_text("✓")
    set_params(page, "chat", 16)
    send(page, FRANCE)
    expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)


def test_chinese_preset_and_prompt_round_trip(page):
    page.locator("#chat-preset input").click()
    page.locator('#chat-preset li[aria-label="厨师 · Chef (中文)"]').click()
    expect(page.locator("#chat-system textarea")).to_have_value(CHEF)
    set_params(page, "chat", 24)
    question = "请问番茄炒蛋怎么做？需要哪些食材？"
    send(page, question)
    expect(user(page)).to_have_text(question)
    expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
    assert bot(page).last.inner_text().strip()
    expect(page.locator("#chat-system textarea")).to_have_value(CHEF)
    no_error_toast(page)
    screenshot(page, "chat_chinese")


def test_two_sessions_chat_at_once_without_sharing_history(chromium, server):
    pages = []
    for _ in range(2):
        ctx = chromium.new_context(viewport={"width": 1200, "height": 900})
        pages.append(open_app(ctx.new_page(), server[0]))
    a, b = pages
    questions = {id(a): FRANCE, id(b): "What is the capital of Japan?"}
    for pg in pages:
        set_params(pg, "chat", 24)
    for pg in pages:  # both in flight together (concurrency limit 2)
        send(pg, questions[id(pg)])
    for pg in pages:
        expect(badges(pg)).to_have_count(1, timeout=REPLY_TIMEOUT)
    expect(bot(a).last).to_contain_text("Paris")
    expect(bot(b).last).to_contain_text("Tokyo")
    for pg, other in ((a, b), (b, a)):
        expect(user(pg)).to_have_count(1)
        expect(user(pg)).to_have_text(questions[id(pg)])
        assert questions[id(other)] not in pg.locator("#chat-chatbot").inner_text()
    # a reload starts a fresh session: empty conversation
    a.reload()
    expect(a.locator("#chat-input textarea")).to_be_visible(timeout=60_000)
    expect(user(a)).to_have_count(0)
    for pg in pages:
        pg.context.close()


def test_compare_two_slots_each_with_its_badge(page, server):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill(FRANCE)
    set_params(page, "compare", 24)
    expect(page.locator("#compare-slot-2")).to_be_hidden()
    page.locator("#compare-run").click()
    for i, variant in enumerate(("bf16", "int8")):
        badge = page.locator(f"#compare-badge-{i} .reply-badge")
        expect(badge).to_contain_text(variant, timeout=REPLY_TIMEOUT)
        expect(badge).to_contain_text("tok/s")
        expect(page.locator(f"#compare-reply-{i}")).to_contain_text("Paris")
    expect(page.locator("#compare-status")).to_contain_text("done")
    expect(page.locator("#compare-status")).to_contain_text("[int8] ≈")
    screenshot(page, "compare")
    page.locator("#compare-count").get_by_text("3").click()
    expect(page.locator("#compare-slot-2")).to_be_visible()
    expect(page.locator("#compare-slot-3")).to_be_hidden()
    screenshot(page, "compare_3_slots")


def test_models_tab_lists_and_unloads(page, server):
    manager = server[2]
    manager.get(DEFAULT_MODEL, "int8")  # make sure there is something to unload besides bf16
    page.get_by_role("tab", name="Models").click()
    table = page.locator("#models-table")
    expect(table).to_contain_text("int8", timeout=30_000)
    expect(table).to_contain_text("bf16")
    expect(page.locator("#models-memory")).to_contain_text("Memory budget")
    screenshot(page, "models")
    page.locator("#models-choice input").click()
    page.locator(f'#models-choice li[aria-label="{DEFAULT_MODEL} [int8]"]').click()
    page.locator("#models-unload").click()
    expect(page.locator("#models-message")).to_contain_text(f"unloaded {DEFAULT_MODEL} [int8]")
    expect(table).not_to_contain_text("int8")
    assert manager.find(DEFAULT_MODEL, "int8") is None and manager.find(DEFAULT_MODEL, "bf16") is not None


def test_time_to_first_token_browser_vs_engine(page, server):
    """TTFT three ways for the same request (FRANCE, the default system prompt, greedy, 16 new tokens), on the same
    loaded model, in this one process, interleaved so that all three see the same load on the machine:

    * engine: ``stream_reply``'s own TTFT, called here directly, once right before each request from the page;
    * badge: the TTFT the reply's badge shows: the same ``ReplyStats.ttft_s``, measured by the same ``stream_reply``
      inside the app's chat handler (a Gradio worker thread);
    * browser: click on Send → the first reply text rendered in the page (a MutationObserver), which also notes
      when the badge (the end of the reply) is rendered.

    Asserted over 5 requests (a busy machine only ever adds time: the fastest of 5 is the least disturbed sample,
    the median the typical one):
    * the page's request is the engine's request: the same number of prompt tokens (the status line);
    * the badge measures what the engine measures: the fastest badge is within 3x either way of the fastest engine
      TTFT (measured: 0.65-1.25x, also with the machine overloaded; medians can be 4x apart when other load hits
      the app's requests and not the engine's). A badge in another unit, or one that times the whole reply, the
      queue wait or a model load, is out of it;
    * each browser TTFT is >= its badge's (the engine's interval lies inside the page's), so a badge that timed the
      whole reply instead of the first token fails here too;
    * the reply streams: the first text is on the page before the badge (a reply shown only when complete fails);
    * the UI + network overhead (browser - badge, median) is at most the engine's median TTFT + 500 ms: Gradio's
      queue, the SSE stream and the Chatbot rendering the first token, which a busy CPU slows as it slows the engine
      (measured: medians of 60-350 ms against engine TTFTs of 80-400 ms; one second of lag in the UI fails)."""
    from playground.engine import GenerationParams, stream_reply

    lm = server[2].get(DEFAULT_MODEL, "bf16")
    system = "You are a helpful assistant."
    assert page.locator("#chat-system textarea").input_value() == system      # the page's default preset
    msgs = [{"role": "user", "content": FRANCE}]

    def engine_ttft() -> tuple[float, int]:
        for event in stream_reply(lm, msgs, system, GenerationParams(max_new_tokens=16, greedy=True)):
            pass
        return event.stats.ttft_s * 1000, event.stats.prompt_tokens

    set_params(page, "chat", 16)
    engine_ttft()          # warm-up: the first forward passes of a freshly loaded model are slower
    engine, browser_ms, done_ms, badge_ms, badge_tokens, engine_prompt, page_prompt = [], [], [], [], [], [], []
    for i in range(5):
        ms, n_prompt = engine_ttft()
        engine.append(ms)
        engine_prompt.append(n_prompt)
        page.locator("#chat-clear").click()
        expect(user(page)).to_have_count(0)
        page.locator("#chat-input textarea").fill(FRANCE)
        page.evaluate("""() => {
            window.__ttft = null; window.__done = null;
            const root = document.querySelector('#chat-chatbot');
            const obs = new MutationObserver(() => {
                const now = performance.now() - window.__t0;
                const b = root.querySelectorAll('[data-testid="bot"]');
                const text = b.length ? b[b.length - 1].innerText.trim() : '';
                if (window.__ttft === null && text && text !== '…') window.__ttft = now;
                if (root.querySelector('.reply-badge')) { window.__done = now; obs.disconnect(); }
            });
            obs.observe(root, {childList: true, subtree: true, characterData: true});
            window.__t0 = performance.now();
            document.querySelector('#chat-send').click();
        }""")
        expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
        browser_ms.append(page.evaluate("window.__ttft"))
        done_ms.append(page.evaluate("window.__done"))
        badge = badges(page).first.inner_text()
        badge_ms.append(int(re.search(r"TTFT (\d+) ms", badge).group(1)))
        badge_tokens.append(int(re.search(r"(\d+) tokens", badge).group(1)))
        status = page.locator("#chat-status").inner_text()
        page_prompt.append(int(re.search(r"last reply: (\d+) prompt tokens", status).group(1)))
    result = {"engine_ttft_ms": engine, "browser_ttft_ms": browser_ms, "badge_ttft_ms": badge_ms,
              "browser_done_ms": done_ms}
    SCREENS.mkdir(parents=True, exist_ok=True)
    (SCREENS / "ttft.json").write_text(json.dumps(result, indent=2))
    print("\nTTFT", json.dumps(result))

    def median(xs):
        return sorted(xs)[len(xs) // 2]
    assert len(set(engine_prompt + page_prompt)) == 1, (engine_prompt, page_prompt)    # the same request
    assert all(n >= 2 for n in badge_tokens), badge_tokens       # more than one token: streaming can show
    assert all(e > 0 for e in engine) and all(b > 0 for b in badge_ms), result
    assert all(b is not None and d is not None for b, d in zip(browser_ms, done_ms)), result
    assert min(engine) / 3 <= min(badge_ms) <= 3 * min(engine), result
    # the page cannot show a token before the engine made it (the engine's interval lies inside the page's)
    assert all(b >= e for b, e in zip(browser_ms, badge_ms)), result
    assert median([d - b for b, d in zip(browser_ms, done_ms)]) > 0, result     # first text before the end
    overhead = median([b - e for b, e in zip(browser_ms, badge_ms)])   # UI + network overhead
    assert overhead <= median(engine) + 500, (overhead, result)
