"""Issue #17 item 5, the plots on a phone (390×844, Debian's chromium): in report.html (made by the real CLI from
committed runs) and in the Benchmark tab, no figure's title runs into its legend, its plot areas, its subplot
titles or off the figure, no legend covers a plot or an axis title, and the page does not scroll sideways.

Screenshots go to the test's tmp folder and to /tmp/shots17/."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from ui_support import ROOT, browser, running_app

SHOTS = Path("/tmp/shots17")
PHONE = {"width": 390, "height": 844}
# bars, scatter, quality, reference; and bars, scatter, a sweep, reference with long random-weights legend entries
RUNS = ("cpu-quality-smollm2-gemma3", "gpu-h200-mistral7b-random")

# For every plotly figure in the page: what overlaps what (boxes in page pixels; 1 px of slack).
OVERLAPS_JS = """(root) => {
  const box = (e) => { const r = e.getBoundingClientRect(); return {x: r.left, y: r.top, r: r.right, b: r.bottom}; };
  const hit = (a, b) => a.x < b.r - 1 && b.x < a.r - 1 && a.y < b.b - 1 && b.y < a.b - 1;
  const inside = (a, f) => a.x >= f.x - 1 && a.r <= f.r + 1 && a.y >= f.y - 1 && a.b <= f.b + 1;
  return [...document.querySelectorAll(root + ' .js-plotly-plot')].map((p) => {
    const fig = box(p.querySelector('.main-svg'));
    const title = p.querySelector('.gtitle'), subtitle = p.querySelector('.gtitle-subtitle');
    const legend = p.querySelector('.legend'), l = legend && box(legend);
    let t = title && box(title);
    const s = subtitle && subtitle.textContent ? box(subtitle) : null;
    const problems = [], bad = (m) => problems.push(m);
    if (t && s && hit(t, s)) bad('title over its subtitle');
    if (t && s) t = {x: Math.min(t.x, s.x), y: Math.min(t.y, s.y), r: Math.max(t.r, s.r), b: Math.max(t.b, s.b)};
    const block = p.closest('.block'), badge = block && block.querySelector('[data-testid="block-label"]');
    if (t && badge && badge.offsetParent && hit(t, box(badge))) bad("title under the app's label badge");
    const areas = [...p.querySelectorAll('.draglayer .nsewdrag')].map(box);
    const subtitles = [...p.querySelectorAll('.annotation-text-g')].map(box);
    const axisTitles = [...p.querySelectorAll('.xtitle, .ytitle')].map(box);
    if (t && !inside(t, fig)) bad('title off the figure');
    if (l && !inside(l, fig)) bad('legend off the figure');
    if (t && l && hit(t, l)) bad('title over the legend');
    areas.forEach((a, i) => { if (t && hit(t, a)) bad('title over plot ' + i);
                              if (l && hit(l, a)) bad('legend over plot ' + i); });
    subtitles.forEach((a, i) => {
      if (t && hit(t, a)) bad('title over subplot title ' + i);
      if (l && hit(l, a)) bad('legend over subplot title ' + i);
      if (!inside(a, fig)) bad('subplot title off the figure ' + i);
      subtitles.forEach((b, j) => j > i && hit(a, b) && bad(`subplot titles ${i} and ${j}`));
      areas.forEach((b, j) => hit(a, b) && bad(`subplot title ${i} over plot ${j}`));
    });
    axisTitles.forEach((a, i) => {
      if (t && hit(t, a)) bad('title over axis title ' + i);
      if (l && hit(l, a)) bad('legend over axis title ' + i);
      axisTitles.forEach((b, j) => j > i && hit(a, b) && bad(`axis titles ${i} and ${j}`));
    });
    return {title: title ? title.textContent : '', subtitle: subtitle ? subtitle.textContent : '',
            width: fig.r - fig.x, areas: areas.length, problems};
  });
}"""


def figure_problems(pg: Page, root: str) -> list[dict]:
    """Each figure's title and problems; a panel with nothing to plot (no title: its note is an annotation over
    an empty plot area) has to keep its note on the figure."""
    figures = pg.evaluate(OVERLAPS_JS, root)
    assert figures and all(f["areas"] for f in figures), figures
    for f in figures:
        if not f["title"]:
            f["problems"] = [p for p in f["problems"] if " over plot " not in p]
    return figures


def keep(path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.mark.parametrize("run", RUNS)
def test_report_plots_keep_titles_and_legends_clear_on_a_phone(chromium, run, tmp_path):
    folder = tmp_path / run
    folder.mkdir()
    shutil.copy(ROOT / "results" / run / "results.json", folder)
    made = subprocess.run([sys.executable, "-m", "benchmarks", "report", str(folder)], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)
    assert made.returncode == 0, made.stderr
    # a phone's browser (is_mobile): without <meta name=viewport> it lays the page out 980 px wide and shrinks it
    context = chromium.new_context(viewport=PHONE, is_mobile=True, device_scale_factor=3, has_touch=True)
    pg = context.new_page()
    pg.goto((folder / "report.html").as_uri())
    assert pg.evaluate("window.innerWidth") == 390
    pg.wait_for_function("document.querySelectorAll('.js-plotly-plot .gtitle').length >= 3")
    figures = figure_problems(pg, "body")
    assert all(300 < f["width"] <= 390 for f in figures), figures         # each figure fits the phone's width
    assert [f for f in figures if f["problems"]] == [], figures
    assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]   # wide tables scroll in a box
    shot = tmp_path / f"report-plots-{run}-phone.png"
    pg.screenshot(path=str(shot), full_page=True)
    keep(shot)
    context.close()


def test_benchmark_tab_plots_keep_titles_and_legends_clear_on_a_phone(chromium, tmp_path, monkeypatch):
    """The tab's plots after a finished run (the committed rows of a run, as the tab's own job would hold them)."""
    from benchmarks import ui_tab
    from benchmarks.results import load_results
    rows = load_results(ROOT / "results" / RUNS[0])["rows"]
    shutil.copy(ROOT / "results" / RUNS[0] / "results.json", tmp_path)
    monkeypatch.setattr(ui_tab, "RESULTS_ROOT", tmp_path)
    job = ui_tab.Job(out=str(tmp_path), device="cpu", rows=rows, done=True, version=1, message="done")
    job.ended = job.started
    with running_app(preload=()) as (url, _, _):
        monkeypatch.setattr(ui_tab, "_JOB", job)
        context = chromium.new_context(viewport=PHONE)
        pg = context.new_page()
        pg.goto(url)
        pg.wait_for_selector("body[data-phone-layout=ready]", state="attached", timeout=60_000)
        pg.get_by_role("tab", name="Benchmark").click()
        expect(pg.locator("#bench-bars .js-plotly-plot .gtitle")).to_contain_text("Per variant", timeout=30_000)
        expect(pg.locator("#bench-scatter .js-plotly-plot .gtitle")).to_contain_text("Memory vs decode")
        pg.wait_for_timeout(500)        # plotly's second layout pass (automargin) after the first draw
        figures = figure_problems(pg, "#tab-benchmark")
        assert len(figures) == 3 and [f for f in figures if f["problems"]] == [], figures
        expect(pg.locator("#bench-sweep")).to_contain_text("nothing to plot yet: the sweep plot needs")
        shot = tmp_path / "benchmark-tab-plots-phone.png"
        pg.locator("#bench-bars").scroll_into_view_if_needed()
        pg.screenshot(path=str(shot), full_page=True)
        keep(shot)
        context.close()
