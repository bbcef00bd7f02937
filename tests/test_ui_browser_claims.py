"""README claims about the web app, checked where the user clicks: Playwright + headless Chromium against the real
``launch.py`` (a subprocess on 127.0.0.1) with the real default model.

1. Benchmark tab: Run fills the live table; Stop ends a second run early, marked stopped.
2. Models tab: an OpenAI-compatible endpoint added through the form is listed, answers in the Chat tab, and is
   gone after Remove (a tiny OpenAI-style server on loopback, started here, plays the endpoint).
3. ``--max-queue``: with ``--concurrency-limit 1 --max-queue 1`` the request that does not fit gets Gradio's
   queue-full error (in the page, and through gradio_client), the queued one still completes, and the app keeps
   serving.
4. Compare with 4 slots: four model × variant slots each answer with their own badge.
5. Chat tab's Unload: the model is reported unloaded (status line, Models tab), and the next message loads it again.

One ``launch.py`` serves tests 1, 2, 4 and 5 (module scope); test 3 needs its own flags and starts its own. Every
wait is on a condition in the page with a generous timeout (2 shared CPU cores), never a tight time bound.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ui_support import DEFAULT_MODEL, ROOT, browser, launched_app

from playwright.sync_api import Page, expect  # noqa: E402  (requirements-dev.txt)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402
from page_support import badges, bot, open_app, send, set_params, user  # noqa: E402

FRANCE = "What is the capital of France?"
REPLY_TIMEOUT = 180_000      # ms: one short reply on 2 busy cores
LOAD_TIMEOUT = 600_000       # ms: loading (and quantizing) a variant, then replying
BENCH_TIMEOUT = 600_000      # ms: a tiny sweep (a worker process per variant)


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    """``python launch.py --device cpu`` (smollm2-135m-instruct bf16 preloaded), shared by this module's tests."""
    with launched_app("--device", "cpu") as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium, server):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = open_app(context.new_page(), server[0])
    yield pg
    context.close()


# ---- page helpers ------------------------------------------------------------------------------------------------
def error_toasts(pg: Page):
    return pg.locator('[data-testid="toast-body"].error')


def pick(pg: Page, elem_id: str, option: str) -> None:
    """Choose ``option`` in the (single-select) dropdown ``#elem_id`` from its list of options."""
    pg.locator(f"#{elem_id} input").click()
    pg.locator(f'#{elem_id} li[aria-label="{option}"]').click()
    expect(pg.locator(f"#{elem_id} input")).to_have_value(option)


def open_tab(pg: Page, name: str) -> None:
    pg.get_by_role("tab", name=name).click()


GRID_ROWS_JS = """(elemId) => {
    const root = document.getElementById(elemId);
    if (!root) return null;
    const rows = [...root.querySelectorAll('.virtual-row[role="row"]')];   // gradio 6: virtualized rows
    return rows.map(r => [...r.querySelectorAll('[role="gridcell"]')].map(c => c.textContent.trim())); }"""


def grid_rows(pg: Page, elem_id: str, timeout_ms: int = 30_000) -> list[list[str]]:
    """The body rows of the Dataframe ``#elem_id`` as the page shows them (cell texts). Read through
    ``wait_for_function``, whose timeout Playwright's driver enforces: a plain ``evaluate`` has none and blocks
    for ever in a renderer that does not answer."""
    return pg.wait_for_function(GRID_ROWS_JS, arg=elem_id, timeout=timeout_ms).json_value()


def wait_for_rows(pg: Page, elem_id: str, predicate, timeout_ms: int, what: str) -> list[list[str]]:
    """Poll the Dataframe until ``predicate(rows)`` holds; fail with what the page shows."""
    deadline = time.monotonic() + timeout_ms / 1000
    rows: list[list[str]] | str = []
    while True:
        try:
            rows = grid_rows(pg, elem_id, timeout_ms=max(1_000, int((deadline - time.monotonic()) * 1000)))
        except PlaywrightTimeoutError:
            rows = "(the page did not answer)"
        if isinstance(rows, list) and predicate(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"#{elem_id}: {what} not seen within {timeout_ms / 1000:.0f} s; rows: {rows}")
        time.sleep(0.5)


# ---- 1. Benchmark tab: Run, then Stop ------------------------------------------------------------------------
BENCH_VARIANTS = ("fp32", "bf16", "fp16", "int8", "nf4", "fp4", "gptq", "awq")


def set_sweep(pg: Page, variants: tuple[str, ...], batch_sizes: str, prompt_tokens: str, new_tokens: str) -> None:
    models = pg.locator("#bench-models")
    models.locator('.token-remove[title="Clear"]').click()        # drop the default model …
    expect(models.locator(".token")).to_have_count(0)
    models.locator("input").fill("random:tiny-llama")                # … and pick the tiny random-weight one
    pg.locator('#bench-models li[aria-label="random:tiny-llama"]').click()
    expect(models.locator(".token")).to_have_text(["random:tiny-llama"])
    for v in BENCH_VARIANTS:
        box = pg.locator(f'#bench-variants input[name="{v}"]')
        box.set_checked(v in variants)
        expect(box).to_be_checked(checked=v in variants)
    for elem, value in (("bench-bs", batch_sizes), ("bench-prompt", prompt_tokens), ("bench-new", new_tokens)):
        box = pg.locator(f"#{elem} textarea")
        box.fill(value)
        expect(box).to_have_value(value)
    for elem, value in (("bench-repeats", "1"), ("bench-warmup", "0")):
        box = pg.locator(f"#{elem} input[type=number]")
        box.fill(value)
        box.press("Tab")
        expect(box).to_have_value(value)
    pick(pg, "bench-device", "cpu")


def results_folder(pg: Page) -> Path:
    text = pg.locator("#bench-status").inner_text()
    m = re.search(r"Results folder: (\S+)", text)
    assert m, f"no results folder in the status: {text!r}"
    return Path(m.group(1).strip("`"))


def row_count(pg: Page) -> int:
    m = re.search(r"(\d+) row\(s\)", pg.locator("#bench-status").inner_text())
    return int(m.group(1)) if m else -1


def test_benchmark_run_fills_the_table_and_stop_ends_a_run(page):
    folders: list[Path] = []
    try:
        _benchmark_run_then_stop(page, folders)
    finally:   # the runs write into the repo's results/: remove what this test made (only that)
        for folder in folders:
            if folder.parent == ROOT / "results" and folder.name.startswith("ui-"):
                shutil.rmtree(folder, ignore_errors=True)


def _benchmark_run_then_stop(page: Page, folders: list[Path]) -> None:
    open_tab(page, "Benchmark")
    status, table = page.locator("#bench-status"), "bench-table"
    run_btn, stop_btn = page.locator("#bench-run"), page.locator("#bench-stop")
    expect(stop_btn).to_be_disabled()
    # --- a small sweep runs to the end: 1 variant × batch sizes 1,2 = 2 rows
    set_sweep(page, ("bf16",), "1,2", "16", "4")
    run_btn.click()
    expect(status).to_contain_text("Running", timeout=30_000)
    expect(status).to_contain_text("%")                          # progress
    folders.append(first := results_folder(page))
    expect(stop_btn).to_be_enabled()
    expect(run_btn).to_be_disabled()
    expect(status).to_contain_text("Done", timeout=BENCH_TIMEOUT)
    expect(status).to_contain_text("2 row(s), 2 ok")
    expect(status).not_to_contain_text("stopped")
    rows = wait_for_rows(page, table, lambda r: len(r) == 2, 30_000, "2 rows")
    for row, bs in zip(rows, ("1", "2")):
        assert row[:3] == ["random:tiny-llama [random weights]", "bf16", bs], row
        assert row[5] == "ok", row
        assert float(row[6]) > 0, row                            # decode tok/s measured
    expect(page.locator("#bench-download")).to_contain_text(".zip", timeout=60_000)
    expect(run_btn).to_be_enabled()
    expect(stop_btn).to_be_disabled()
    done = json.loads((first / "results.json").read_text())
    assert done["cancelled"] is False and len(done["rows"]) == 2

    # --- a bigger sweep, stopped after its first row: 3 variants × batch sizes 1,2 = 6 rows planned
    planned = 6
    set_sweep(page, ("fp32", "bf16", "fp16"), "1,2", "16", "32")
    run_btn.click()
    expect(status).to_contain_text("Running", timeout=30_000)
    folders.append(second := results_folder(page))
    assert second != first
    expect(stop_btn).to_be_enabled()
    # (the table still shows the first run's rows until the timer's next tick: go by this run's status line)
    expect(status).to_contain_text(re.compile(r"Running · [1-9]\d* row\(s\)"), timeout=BENCH_TIMEOUT)
    stop_btn.click()
    expect(status).to_contain_text("Done", timeout=120_000)
    expect(status).to_contain_text("stopped")
    expect(status).to_contain_text("cancelled")
    expect(run_btn).to_be_enabled()
    expect(stop_btn).to_be_disabled()
    shown = row_count(page)
    assert 1 <= shown < planned, status.inner_text()
    time.sleep(3)                                                # the stopped run adds nothing afterwards
    rows = wait_for_rows(page, table, lambda r: len(r) == shown, 30_000, f"{shown} rows")
    assert row_count(page) == shown and len(rows) == shown < planned
    assert all(r[0] == "random:tiny-llama [random weights]" and r[1] in ("fp32", "bf16", "fp16") for r in rows)
    stopped = json.loads((second / "results.json").read_text())
    assert stopped["cancelled"] is True and len(stopped["rows"]) == shown


# ---- 2. Models tab: add an endpoint, chat with it, remove it -----------------------------------------------------
class FakeOpenAI(ThreadingHTTPServer):
    """A minimal OpenAI-compatible server: ``GET /v1/models`` and streamed ``POST /v1/chat/completions`` (SSE)
    whose reply echoes the last user message. ``requests`` records each chat request's JSON body."""
    daemon_threads = True
    MODEL = "fake-model"

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _FakeOpenAIHandler)
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @staticmethod
    def reply_to(message: str) -> str:
        return f"Echo from {FakeOpenAI.MODEL}: {message}"


class _FakeOpenAIHandler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args):   # quiet
        pass

    def _json(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": FakeOpenAI.MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.requests.append(body)
        last = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"][-1]
        words = re.findall(r"\S+\s*", FakeOpenAI.reply_to(last))
        if not body.get("stream"):
            self._json(200, {"object": "chat.completion", "model": FakeOpenAI.MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()                      # HTTP/1.0: the stream ends when the connection closes

        def event(data) -> None:
            self.wfile.write(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": FakeOpenAI.MODEL}
        event({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for w in words:
            time.sleep(0.05)
            event({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
        event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            event({**base, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}})
        event("[DONE]")


@contextmanager
def fake_openai_server():
    srv = FakeOpenAI()
    thread = threading.Thread(target=srv.serve_forever, name="fake-openai", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def test_endpoint_added_in_the_models_tab_answers_in_chat_and_can_be_removed(page, chromium):
    name, choice = "fake", "endpoint:fake"
    message = "Hello endpoint, please echo this."
    with fake_openai_server() as fake:
        open_tab(page, "Models")
        page.locator("#endpoint-url textarea").fill(fake.url)
        page.locator("#endpoint-model textarea").fill(FakeOpenAI.MODEL)
        page.locator("#endpoint-name textarea").fill(name)
        page.locator("#endpoint-add").click()
        note = page.locator("#endpoint-message")
        expect(note).to_contain_text(f"added {choice}", timeout=60_000)
        expect(note).to_contain_text(f"reachable ({FakeOpenAI.MODEL})")
        etable = page.locator("#endpoints-table")
        expect(etable).to_contain_text(choice)
        expect(etable).to_contain_text(fake.url)
        expect(etable).to_contain_text("this browser session")
        # it is this browser session's alone: another user of the app neither sees it nor can pick it
        other = open_app(chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page(), page.url)
        try:
            open_tab(other, "Models")
            expect(other.locator("#endpoints-help")).to_be_visible()
            expect(other.locator("#endpoints-table")).not_to_contain_text(choice)
            open_tab(other, "Chat")
            other.locator("#chat-model input").click()
            expect(other.locator(f'#chat-model li[aria-label="{DEFAULT_MODEL}"]')).to_have_count(1)
            expect(other.locator(f'#chat-model li[aria-label="{choice}"]')).to_have_count(0)
        finally:
            other.context.close()
        # the Chat tab lists it as a model; picking it and sending a message streams the server's reply
        open_tab(page, "Chat")
        pick(page, "chat-model", choice)
        expect(page.locator("#chat-status")).to_contain_text(choice)
        set_params(page, "chat", 32)
        send(page, message)
        expect(badges(page)).to_have_count(1, timeout=REPLY_TIMEOUT)
        expect(user(page)).to_have_text(message)
        expect(bot(page).last).to_contain_text(FakeOpenAI.reply_to(message))
        words = len(FakeOpenAI.reply_to(message).split())
        badge = badges(page).first
        expect(badge).to_contain_text(f"{words} tokens")           # the server's usage count
        expect(badge).to_contain_text("(client-side)")
        expect(badge).to_contain_text("served")
        expect(error_toasts(page)).to_have_count(0)
        assert len(fake.requests) == 1, fake.requests
        sent = fake.requests[0]
        assert sent["model"] == FakeOpenAI.MODEL and sent["stream"] is True
        assert sent["messages"][-1] == {"role": "user", "content": message}
        assert sent["max_tokens"] == 32 and sent["temperature"] == 0.0    # greedy
        # remove it in the Models tab: gone from the list, and the Chat tab can no longer use it
        open_tab(page, "Models")
        pick(page, "endpoint-choice", choice)
        page.locator("#endpoint-remove").click()
        expect(note).to_contain_text(f"removed {choice}", timeout=60_000)
        expect(etable).not_to_contain_text(choice)
        open_tab(page, "Chat")
        send(page, "Are you still there?")
        expect(error_toasts(page).first).to_contain_text(f"no endpoint named '{name}'", timeout=60_000)
        expect(badges(page)).to_have_count(1)
        assert len(fake.requests) == 1, "a removed endpoint was still called"


# ---- 3. --max-queue: overflow is turned away, the rest completes ------------------------------------------------
def test_max_queue_turns_away_the_overflow_and_the_app_keeps_serving(chromium):
    from gradio_client import Client
    from gradio_client.utils import QueueError

    with launched_app("--device", "cpu", "--concurrency-limit", "1", "--max-queue", "1") as (url, proc):
        contexts = [chromium.new_context(viewport={"width": 1200, "height": 900}) for _ in range(3)]
        try:
            running, queued, overflow = (open_app(c.new_page(), url) for c in contexts)
            set_params(running, "chat", 400)
            for pg in (queued, overflow):
                set_params(pg, "chat", 16)
            # 1: one reply is generated (concurrency 1) …
            send(running, "Write a long story about a dragon who learns to fly.")
            running.wait_for_function("""() => {
                const b = document.querySelectorAll('#chat-chatbot [data-testid="bot"]');
                return b.length && b[b.length - 1].innerText.length > 40; }""", timeout=REPLY_TIMEOUT)
            # 2: … one waits in the queue (--max-queue 1) …
            send(queued, FRANCE)
            expect(queued.locator("#chat-status .progress-text")).to_contain_text("queue: 1/1", timeout=60_000)
            # 3: … and one more does not fit: Gradio's queue-full error, in the page and through the API
            send(overflow, "What is the capital of Japan?")
            expect(error_toasts(overflow).first).to_contain_text("This application is currently busy",
                                                                 timeout=60_000)
            expect(user(overflow)).to_have_count(0)
            expect(overflow.locator("#chat-input textarea")).to_have_value("What is the capital of Japan?")
            job = Client(url, verbose=False).submit(DEFAULT_MODEL, "bf16", FRANCE, [], "", 8, 0.7, 0.9, 50, 1.0,
                                                    -1, True, api_name="/chat")
            with pytest.raises(QueueError, match="Queue is full"):
                job.result(timeout=120)
            # the running reply and the queued one both complete (Stop ends the long one sooner)
            expect(error_toasts(running)).to_have_count(0)
            running.locator("#chat-stop").click()
            expect(badges(running)).to_have_count(1, timeout=REPLY_TIMEOUT)
            expect(badges(queued)).to_have_count(1, timeout=REPLY_TIMEOUT)
            expect(bot(queued).last).to_contain_text("Paris")
            expect(error_toasts(queued)).to_have_count(0)
            # the app keeps serving: the turned-away page sends again and gets its answer, so does the API
            overflow.locator("#chat-send").click()
            expect(badges(overflow)).to_have_count(1, timeout=REPLY_TIMEOUT)
            expect(bot(overflow).last).to_contain_text("Tokyo")
            reply, stats = Client(url, verbose=False).predict(DEFAULT_MODEL, "bf16", FRANCE, [], "", 16, 0.7, 0.9,
                                                              50, 1.0, -1, True, api_name="/chat")
            assert "Paris" in reply and stats["new_tokens"] > 0
            assert proc.proc.poll() is None, proc.output
        finally:
            for c in contexts:
                c.close()


# ---- 4. Compare with 4 slots -------------------------------------------------------------------------------------
COMPARE_VARIANTS = ("bf16", "int8", "fp32", "nf4")


def test_compare_four_slots_each_answer_with_their_badge(page):
    open_tab(page, "Compare")
    page.locator("#compare-prompt textarea").fill(FRANCE)
    set_params(page, "compare", 24)
    page.locator("#compare-count").get_by_text("4").click()
    for i, variant in enumerate(COMPARE_VARIANTS):
        expect(page.locator(f"#compare-slot-{i}")).to_be_visible()
        if page.locator(f"#compare-variant-{i} input").input_value() != variant:
            pick(page, f"compare-variant-{i}", variant)
        expect(page.locator(f"#compare-model-{i} input")).to_have_value(DEFAULT_MODEL)
        expect(page.locator(f"#compare-variant-{i} input")).to_have_value(variant)
    page.locator("#compare-run").click()
    status = page.locator("#compare-status")
    expect(status).to_contain_text("slot 4:", timeout=60_000)          # the memory plan names all 4 slots
    expect(status).to_contain_text("✓ done", timeout=4 * LOAD_TIMEOUT)
    expect(status).not_to_contain_text("failed")
    for i, variant in enumerate(COMPARE_VARIANTS):
        badge = page.locator(f"#compare-badge-{i} .reply-badge")
        expect(badge).to_have_count(1)
        expect(badge).to_contain_text(re.compile(rf"TTFT \d+ ms · [\d.]+ tok/s · \d+ tokens · .* · {variant}$"))
        reply = page.locator(f"#compare-reply-{i}")
        text = reply.inner_text().strip()
        assert text and not text.startswith(("⚠", "*waiting", "*loading", "*(empty")), (variant, text)
        if variant in ("bf16", "fp32"):                                   # unquantized: the plain answer
            expect(reply).to_contain_text("Paris")
    expect(error_toasts(page)).to_have_count(0)


# ---- 5. Chat tab's Unload, then the next message loads again -----------------------------------------------------
def has_row(rows: list[list[str]], model: str, variant: str) -> bool:
    return any(len(r) > 1 and r[0] == model and r[1] == variant for r in rows)


def test_chat_unload_then_the_next_message_loads_the_model_again(page):
    status = page.locator("#chat-status")
    label = f"{DEFAULT_MODEL} [bf16]"
    set_params(page, "chat", 16)
    send(page, FRANCE)
    expect(badges(page)).to_have_count(1, timeout=LOAD_TIMEOUT)   # earlier tests may have unloaded it
    expect(bot(page).last).to_contain_text("Paris")
    page.locator("#chat-unload").click()
    expect(status).to_contain_text(f"unloaded {label}: memory returned", timeout=60_000)
    open_tab(page, "Models")
    page.locator("#models-refresh").click()
    rows = wait_for_rows(page, "models-table", lambda r: not has_row(r, DEFAULT_MODEL, "bf16"), 30_000,
                         f"no {label} row")
    expect(page.locator("#models-memory")).to_contain_text(f"· {len(rows)} model(s) loaded")   # table read right
    expect(page.locator("#models-choice input")).not_to_have_value(label)
    # the model choice list of the Models tab no longer offers it either
    page.locator("#models-choice input").click()
    expect(page.locator(f'#models-choice li[aria-label="{label}"]')).to_have_count(0)
    page.locator("#models-choice input").press("Escape")   # a locator's press has a timeout; keyboard's has none
    # the next message loads it again and answers
    open_tab(page, "Chat")
    send(page, "And the capital of Italy?")
    expect(badges(page)).to_have_count(2, timeout=LOAD_TIMEOUT)
    expect(bot(page).last).to_contain_text("Rome")
    expect(status).to_contain_text(label)
    expect(status).to_contain_text("✓")
    expect(status).to_contain_text(re.compile(r"load \d+\.\d s"))
    expect(error_toasts(page)).to_have_count(0)
    open_tab(page, "Models")
    page.locator("#models-refresh").click()
    wait_for_rows(page, "models-table", lambda r: has_row(r, DEFAULT_MODEL, "bf16"), 30_000, f"the {label} row")
