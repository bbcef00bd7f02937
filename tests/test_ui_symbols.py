"""Issue #17: the marks in front of status lines were emoji (✅ ⚠️ ⏳ ⏹ ⛔ 📊 …), drawn as empty boxes by Debian's
chromium, which has no emoji font. Every character the app can show is now one an installed font draws (DejaVu,
Liberation: asked of fontconfig), and none is an emoji: the UI's string literals, the served page's config and the
status lines as the handlers make them. Chinese text is content (the 中文 preset, Chinese replies) and needs a CJK
font; it is left out here."""
from __future__ import annotations

import ast
import functools
import json
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
# what the app's pages and messages are made of: the engine's and manager's messages reach the page too
SHOWN_SOURCES = sorted((ROOT / "playground").rglob("*.py")) + [ROOT / "benchmarks" / "ui_tab.py",
                                                               ROOT / "benchmarks" / "sweep_checks.py"]
# emoji by default (Unicode's Emoji_Presentation) in the blocks the old marks came from, and the emoji selector
EMOJI_PRESENTATION = set("⌚⌛⏩⏪⏫⏬⏰⏳◽◾☔☕♿⚓⚡⚪⚫⚽⚾⛄⛅⛎⛔⛪⛲⛳⛵⛺⛽"
                         "✅✊✋✨❌❎❓❔❕❗➕➖➗➰➿⬛⬜⭐⭕") | {"\ufe0f"}


def is_emoji(ch: str) -> bool:
    return ch in EMOJI_PRESENTATION or 0x1F000 <= ord(ch) <= 0x1FAFF


def is_content(ch: str) -> bool:
    """CJK text (the Chinese preset and its prompt): it needs a CJK font, not a different symbol."""
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK ", "FULLWIDTH ", "IDEOGRAPHIC ")) or 0x3000 <= ord(ch) <= 0x303F


@functools.cache
def drawn_by_a_font(ch: str) -> bool:
    """Whether an installed font has a glyph for ``ch`` (fontconfig's answer, as chromium on Linux asks it)."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        pytest.fail("fc-list (fontconfig) is missing: the browser tests' Debian chromium brings it")
    out = subprocess.run([fc_list, f":charset={ord(ch):x}", "family"], capture_output=True, text=True, timeout=30)
    return bool(out.stdout.strip())


def undrawable(text: str) -> dict[str, str]:
    """The characters of ``text`` that would show as a box or as an emoji, with their Unicode names."""
    chars = {ch for ch in text if ord(ch) > 127 and not is_content(ch) and unicodedata.category(ch) != "Cc"}
    return {ch: unicodedata.name(ch, hex(ord(ch))) for ch in sorted(chars)
            if is_emoji(ch) or not drawn_by_a_font(ch)}


def test_the_check_finds_the_old_marks():
    """The fonts here lack the emoji the status lines used; the check must say so, else it proves nothing."""
    assert set(undrawable("✅ Loaded · ⚠️ Error · ⏳ Loading · ⏹ Stopped · ⛔ Not available · 📊 TTFT")) == \
        set("✅⏳⏹⛔📊\ufe0f")
    assert undrawable("✓ Loaded · ⚠ Error · ◔ Loading · ■ Stopped · ✗ Not available · ○ not loaded · ℹ · ⏏") == {}
    assert undrawable("厨师 · Chef (中文)") == {}                                           # content: left out


def string_literals(path: Path) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return "\n".join(node.value for node in ast.walk(tree)
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


def test_the_apps_string_literals_have_no_emoji_and_no_character_without_a_font():
    found = {str(p.relative_to(ROOT)): bad for p in SHOWN_SOURCES if (bad := undrawable(string_literals(p)))}
    assert found == {}, found


def test_the_served_page_has_no_emoji_and_no_character_without_a_font(manager):
    """Everything the page is built from (labels, placeholders, infos, initial values, the CSS and scripts)."""
    from playground.ui.app import build_app
    app = build_app(manager)
    served = json.dumps(app.config, ensure_ascii=False, default=str)
    assert "Run benchmark" in served and "Processing the prompt" not in served
    assert undrawable(served) == {}


def test_status_lines_as_the_handlers_make_them(manager, smollm_bf16):
    from playground.device_use import sharing_device
    from playground.engine import ReplyStats
    from playground.progress import LoadSnapshot
    from playground.ui import chat_handlers, compare_tab
    from playground.ui.app import build_app
    from playground.ui.common import badge_html, badge_text, describe_loaded, device_busy_note
    from playground.ui.loading import bar_html, prefill_note
    from playground.manager import ModelManager
    ctx = build_app(manager).playground_ctx
    empty = build_app(ModelManager(device="cpu")).playground_ctx    # nothing loaded, whatever other tests loaded
    stats = ReplyStats(model=DEFAULT_MODEL, variant="bf16", device="cpu", new_tokens=5, finish_reason="length")
    snapshot = LoadSnapshot("tiny [gptq]", 0.4, "GPTQ calibration", (3, 8), 12.0, 20.0)
    with sharing_device("benchmark"):
        busy = device_busy_note()
    lines = [chat_handlers.selection_status(ctx, DEFAULT_MODEL, "bf16"),           # loaded
             chat_handlers.selection_status(empty, DEFAULT_MODEL, "fp32"),         # not loaded
             chat_handlers.selection_status(ctx, DEFAULT_MODEL, "int3"),           # not available
             chat_handlers.unload(ctx, DEFAULT_MODEL, "fp16"), describe_loaded(smollm_bf16), busy,
             snapshot.line(), bar_html(snapshot), prefill_note(4000, 512),
             badge_html(text=badge_text(stats, continue_hint=True)),
             compare_tab.lanes_line([[0, 1]]), compare_tab.lanes_line([[0], [1]])]
    assert lines[0].startswith("✓ Loaded: ") and lines[1].startswith("○ ") and lines[2].startswith("✗ "), lines
    assert busy.startswith("◔ A benchmark is running") and snapshot.line().startswith("◔ Loading tiny [gptq]")
    assert undrawable("\n".join(lines)) == {}, lines
