"""Issue #17 in the browser, at 1400×900 and 390×844 (Debian's chromium, one real server for the module): the
Chat load bar with Cancel, the context meter, Send/Undo during a reply, the error line, editing a message,
export and import, and the phone layout (conversation first, settings closed, every tab reachable, tables that
scroll instead of breaking words).

Screenshots go to the test's tmp folder and to /tmp/shots17/<test>-<viewport>.png."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from page_support import badges, bot, open_app, send, set_params, user
from playwright.sync_api import Page, expect
from ui_support import DEFAULT_MODEL, ROOT, browser, running_app

VIEWPORTS = {"desktop": (1400, 900), "phone": (390, 844)}
SHOTS = Path("/tmp/shots17")
REPLY_MS = 120_000


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A real 8-layer Llama (tiny-llama's shapes) with SmolLM2's tokenizer: GPTQ calibrates it in seconds, long
    enough to press Cancel in the middle."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from playground.catalog import resolve
    tok = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL).path)
    cfg = json.loads((ROOT / "benchmarks/architectures/tiny-llama.json").read_text())["config"]
    cfg.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               num_hidden_layers=8)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny8") / "tiny8"
    LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The quantized checkpoints of this module go to a folder of their own (PLAYGROUND_CACHE is read per use)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv("PLAYGROUND_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def server(cache):
    with running_app() as s:
        yield s


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture(params=list(VIEWPORTS))
def page(request, chromium, server):
    width, height = VIEWPORTS[request.param]
    context = chromium.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    pg = open_app(context.new_page(), server[0])
    pg.viewport_name = request.param
    yield pg
    context.close()


def shot(pg: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}-{pg.viewport_name}.png"
    pg.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


def toasts(pg: Page, kind: str):
    return pg.locator(f'[data-testid="toast-body"].{kind}')


def dismiss_toasts(pg: Page) -> None:
    for close in pg.locator('[data-testid="toast-close"]').all():
        if close.is_visible():
            close.click()


def open_settings(pg: Page) -> None:
    """On a phone the settings start closed: open them (a second click would close them), once the page's
    load-time script has closed them (else it closes them again after this click)."""
    pg.wait_for_selector("body[data-phone-layout=ready]", state="attached", timeout=30_000)
    if not pg.locator("#chat-preset").is_visible():
        pg.locator("#chat-settings").get_by_text("Settings").first.click()
        expect(pg.locator("#chat-preset")).to_be_visible()


def meter(pg: Page) -> tuple[int, int, int]:
    text = pg.locator("#chat-context").inner_text()
    m = re.search(r"context (\d+) \+ (\d+) of (\d+) tokens", text)
    assert m, text
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# ---- layout -------------------------------------------------------------------------------------------------------
def test_layout_conversation_first_on_a_phone_every_tab_reachable_tables_scroll(page, tmp_path):
    phone = page.viewport_name == "phone"
    main, sidebar = page.locator("#chat-main").bounding_box(), page.locator("#chat-sidebar").bounding_box()
    box = page.locator("#chat-input").bounding_box()
    if phone:
        assert main["y"] < sidebar["y"], (main, sidebar)                    # the conversation first …
        assert box["y"] + box["height"] <= 844, box                         # … and the input on the first screen
        expect(page.locator("#chat-preset")).not_to_be_visible()            # settings closed
    else:
        assert main["x"] > sidebar["x"] and abs(main["y"] - sidebar["y"]) < 40, (main, sidebar)
        expect(page.locator("#chat-preset")).to_be_visible()
    assert meter(page) == (11, 256, 8192)                                   # the system prompt, of the context
    shot(page, tmp_path, "chat-layout")
    # every tab is in the tab bar (none behind a "…" menu)
    tabs = page.get_by_role("tab")
    expect(tabs).to_have_count(4)
    assert tabs.all_inner_texts() == ["Chat", "Compare", "Models", "Benchmark"]
    expect(page.locator(".tab-wrapper .overflow-menu button[aria-label='More tabs']")).to_be_hidden()
    # the Models table scrolls sideways; a model name stays on one line (it broke into letter stacks)
    page.get_by_role("tab", name="Models").click()
    cell = page.locator("#models-table [role='gridcell']", has_text=DEFAULT_MODEL).first
    expect(cell).to_be_visible(timeout=30_000)
    lines = cell.evaluate("""(c) => { let e = c; while (e.firstElementChild) e = e.firstElementChild;
        const r = document.createRange(); r.selectNodeContents(e);
        return Math.round(r.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight || 20)); }""")
    assert lines == 1, f"the model name takes {lines} lines"
    wrap = page.locator("#models-table .virtual-table-viewport").first    # its scrolling box
    widths = wrap.evaluate("(e) => [e.scrollWidth, e.clientWidth]")
    if phone:
        assert widths[0] > widths[1], widths
    shot(page, tmp_path, "models-table")


# ---- errors, busy, undo -----------------------------------------------------------------------------------------
def test_error_line_busy_warnings_and_undo_in_the_page(page, server, tmp_path):
    status = page.locator("#chat-status")
    # an error: one line in words, and no "Error" pill over it
    model = page.locator("#chat-model input")
    model.fill("/no/such/folder")
    model.press("Enter")
    send(page, "Hi")
    expect(status).to_contain_text("⚠ Error: /no/such/folder: no such folder", timeout=30_000)
    expect(status.locator("[data-testid='status-tracker'] .error")).to_be_hidden()
    expect(page.locator("#chat-input textarea")).to_have_value("Hi")        # the message is kept
    shot(page, tmp_path, "error-line")
    dismiss_toasts(page)
    model.fill(DEFAULT_MODEL)
    model.press("Enter")
    expect(status).to_contain_text("✓ Loaded:", timeout=30_000)
    open_settings(page)
    set_params(page, "chat", 300, greedy=True)
    before = meter(page)
    assert before[1] == 300
    # a long reply; Send and Undo meanwhile say why they do nothing
    send(page, "Write a long story about a dragon who learns to fly.")
    page.wait_for_function("""() => { const b = document.querySelectorAll('#chat-chatbot [data-testid="bot"]');
        return b.length && b[b.length - 1].innerText.length > 20; }""", timeout=REPLY_MS)
    page.locator("#chat-input textarea").fill("And then?")
    page.locator("#chat-send").click()
    expect(toasts(page, "warning").first).to_contain_text("A reply is generating: press Stop first, then send",
                                                          timeout=30_000)
    page.locator("#chat-undo").click()
    expect(toasts(page, "warning").filter(has_text="press Stop first, then undo")).to_have_count(1, timeout=30_000)
    expect(page.locator("#chat-input textarea")).to_have_value("And then?")  # kept, not sent
    shot(page, tmp_path, "busy-warning")
    page.locator("#chat-stop").click()
    expect(badges(page)).to_have_count(1, timeout=REPLY_MS)
    expect(badges(page).first).to_contain_text("stopped")
    expect(status).to_contain_text("last reply:")
    expect(user(page)).to_have_count(1)
    after = meter(page)
    assert after[0] > before[0], (before, after)                            # the reply counts now
    # Undo: the exchange goes, so does the "last reply" line; the meter goes back
    page.locator("#chat-undo").click()
    expect(user(page)).to_have_count(0)
    expect(status).not_to_contain_text("last reply")
    expect(page.locator("#chat-context")).to_contain_text(f"context {before[0]} + 300 of 8192 tokens")


# ---- load bar and Cancel ------------------------------------------------------------------------------------------
def test_gptq_load_bar_cancel_then_a_reply_that_says_what_it_waited_for(page, server, tiny_folder, cache,
                                                                         tmp_path):
    quantized = cache / "quantized"
    for old in quantized.glob("tiny8-gptq-*"):      # the other viewport's run made it: quantize again
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    server[2].unload_all()
    model = page.locator("#chat-model input")
    model.fill(str(tiny_folder))
    model.press("Enter")
    page.locator("#chat-variant input").click()
    page.locator('#chat-variant li[aria-label="gptq"]').click()
    page.locator("#chat-load").click()
    bar, cancel = page.locator("#chat-loadbar .load-bar"), page.locator("#chat-cancel-load")
    expect(bar).to_contain_text("GPTQ calibration", timeout=120_000)
    expect(bar).to_contain_text(re.compile(r"\(\d of 8\) · \d+ s elapsed"))
    shot(page, tmp_path, "load-bar")
    cancel.click()
    expect(page.locator("#chat-status")).to_contain_text("■ Cancelled: loading", timeout=60_000)
    expect(bar).to_have_count(0)
    expect(cancel).to_be_hidden()
    assert not [p for p in quantized.glob("*") if not p.name.endswith(".lock")], list(quantized.glob("*"))
    # Send loads it (the bar moves), and the reply's badge says what it waited for
    open_settings(page)
    set_params(page, "chat", 4, greedy=True)
    send(page, "Hello")
    expect(bar).to_contain_text("GPTQ calibration", timeout=120_000)
    first = int(bar.get_attribute("aria-valuenow"))
    expect(bar).to_contain_text("left", timeout=60_000)                     # an estimate, once a layer is done
    assert int(bar.get_attribute("aria-valuenow")) > first
    expect(badges(page)).to_have_count(1, timeout=REPLY_MS)
    expect(badges(page).first).to_contain_text(re.compile(r"waited \d+ s: GPTQ calibration \d+ s, then load"))
    shot(page, tmp_path, "waited-badge")
    assert [p for p in quantized.glob("*") if p.is_dir()], "no checkpoint after a load to the end"


# ---- edit, export, import -----------------------------------------------------------------------------------------
def test_edit_a_message_export_and_import_in_the_page(page, server, tmp_path):
    open_settings(page)
    set_params(page, "chat", 12, greedy=True)
    send(page, "What is the capital of France?")
    expect(badges(page)).to_have_count(1, timeout=REPLY_MS)
    expect(bot(page).first).to_contain_text("Paris")
    # edit the question: the conversation branches there and the model answers the new one
    question = user(page).first
    question.hover()
    page.locator("#chat-chatbot button[aria-label='Edit']").first.click()
    editor = page.locator("#chat-chatbot textarea").first
    editor.fill("What is the capital of Japan?")
    page.locator("#chat-chatbot button[aria-label='Submit']").first.click()
    expect(bot(page).first).to_contain_text("Tokyo", timeout=REPLY_MS)
    expect(user(page)).to_have_count(1)
    expect(user(page).first).to_contain_text("Japan")
    shot(page, tmp_path, "edited")
    # export: JSON with the reply's settings and stats
    page.locator("#chat-export-json").click()
    link = page.locator("#chat-export-file a").first
    expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as dl:
        link.click()
    exported = tmp_path / "conversation.json"
    dl.value.save_as(exported)
    data = json.loads(exported.read_text(encoding="utf-8"))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == "What is the capital of Japan?"
    assert data["messages"][1]["settings"]["max_new_tokens"] == 12 and data["messages"][1]["stats"]["new_tokens"]
    # clear, then import it back; a broken file is one warning and changes nothing
    page.locator("#chat-clear").click()
    expect(user(page)).to_have_count(0)
    def upload(path: Path) -> None:
        with page.expect_file_chooser() as chooser:
            page.locator("#chat-import").click()
        chooser.value.set_files(str(path))
    bad = tmp_path / "broken.json"
    bad.write_text('{"messages": [{"role": "tool", "content": "x"}]}')
    upload(bad)
    expect(toasts(page, "warning").first).to_contain_text(
        'Cannot import: broken.json: message 1 must have the role "user" or "assistant"', timeout=30_000)
    expect(user(page)).to_have_count(0)
    upload(exported)
    expect(user(page)).to_have_count(1, timeout=30_000)
    expect(bot(page).first).to_contain_text("Tokyo")
    expect(page.locator("#chat-status")).to_contain_text("Imported: 2 messages")
    shot(page, tmp_path, "imported")
