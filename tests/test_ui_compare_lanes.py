"""Issue #17 in the browser at 1400×900: Compare with two local slots that are not loaded yet. Each slot shows its
load bar in its own place, the second slot says it waits for slot 1 while slot 1 loads and streams, and the
status ends with the line that says whether the answers agree.

The page's slots change faster than a test can poll (a 0.6 s int8 load), so a MutationObserver in the page keeps
every state the two slots went through; the assertions read that log. Screenshots go to the test's tmp folder and
to /tmp/shots17/."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from page_support import open_app, set_params
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect
from ui_support import DEFAULT_MODEL, browser, running_app

SHOTS = Path("/tmp/shots17")
REPLY_MS = 180_000
FRANCE = "What is the capital of France?"

# every change of the two replies' DOM → one entry: what each slot shows (a load bar, or its text)
WATCH_SLOTS = """() => {
  window.__slots = [];
  const state = (i) => {
    const el = document.querySelector(`#compare-reply-${i}`);
    const bar = el.querySelector('.compare-load-bar');
    return bar ? {bar: bar.getAttribute('aria-valuenow'), text: bar.innerText} : {text: el.innerText.trim()};
  };
  const log = () => window.__slots.push([state(0), state(1)]);
  const obs = new MutationObserver(log);
  for (const i of [0, 1])
    obs.observe(document.querySelector(`#compare-reply-${i}`), {subtree: true, childList: true,
                                                                characterData: true});
}"""


@pytest.fixture(scope="module")
def server():
    with running_app(preload=()) as s:        # nothing loaded: both slots load, each with its bar
        yield s


def test_compare_slots_show_their_load_bars_wait_in_turn_and_say_whether_the_answers_agree(server, tmp_path):
    url, _, manager = server
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        page = open_app(context.new_page(), url)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-prompt textarea").fill(FRANCE)
        set_params(page, "compare", 48)
        for i, variant in enumerate(("bf16", "int8")):
            expect(page.locator(f"#compare-model-{i} input")).to_have_value(DEFAULT_MODEL)
            expect(page.locator(f"#compare-variant-{i} input")).to_have_value(variant)
        page.evaluate(WATCH_SLOTS)
        page.locator("#compare-run").click()
        try:       # a picture of slot 1's bar, when the load lasts long enough to take one (the log has it anyway)
            page.wait_for_selector("#compare-reply-0 .compare-load-bar", timeout=3_000)
            page.screenshot(path=str(tmp_path / "compare-lanes-loading.png"), full_page=True)
        except PlaywrightTimeout:
            pass
        # slot 1 streams while slot 2 waits for it: the moment to look at
        page.wait_for_function("""() => {
            const [a, b] = [0, 1].map(i => document.querySelector(`#compare-reply-${i}`).innerText);
            return a.includes('Paris') && b.includes('waiting for slot 1'); }""", timeout=REPLY_MS)
        page.screenshot(path=str(tmp_path / "compare-lanes-streaming.png"), full_page=True)
        status = page.locator("#compare-status")
        expect(status).to_contain_text("done", timeout=REPLY_MS)
        for i, variant in enumerate(("bf16", "int8")):
            expect(page.locator(f"#compare-badge-{i} .reply-badge")).to_contain_text(variant)
            expect(page.locator(f"#compare-reply-{i}")).to_contain_text("Paris")
        expect(status).to_contain_text("one after another: slot 1 → slot 2")
        expect(status).to_contain_text("Answers (greedy): slot 2:")
        agreement = status.inner_text().split("Answers (greedy): ")[1]
        assert agreement.startswith(("slot 2: the same answer as slot 1", "slot 2: differs from slot 1 at word")), \
            agreement
        page.screenshot(path=str(tmp_path / "compare-lanes-done.png"), full_page=True)
        seen = page.evaluate("window.__slots")
        context.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    for png in tmp_path.glob("*.png"):
        shutil.copy(png, SHOTS / png.name)
    manager.unload_all()

    def during(first, second):
        return [s for s in seen if first(s[0]) and second(s[1])]

    def waiting(s):
        return "waiting for slot 1" in s["text"]

    def streaming(s):
        return "bar" not in s and s["text"] not in ("", "…") and "waiting" not in s["text"]
    # slot 1's bar (its stage in words) while slot 2 waits for it
    loading_1 = during(lambda s: "bar" in s, waiting)
    assert loading_1 and f"{DEFAULT_MODEL} [bf16]" in loading_1[0][0]["text"], seen[:5]
    # slot 1 streams (its text grows over several states) while slot 2 still waits
    assert len({s[0]["text"] for s in during(streaming, waiting)}) >= 3, seen
    # then slot 2 loads with its own bar, slot 1's answer standing
    loading_2 = during(lambda s: "Paris" in s["text"], lambda s: "bar" in s)
    assert loading_2 and f"{DEFAULT_MODEL} [int8]" in loading_2[0][1]["text"], seen
