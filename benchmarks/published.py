"""The published deployment guides' tables (``references/*_guide.csv``) beside a run, as ratios to fp16.

A guide says, per precision, how much RAM and GPU memory a model needs, how long it loads and how long a short and
a long answer take, on its authors' card. Only ratios to that guide's own fp16 row compare with a run made
elsewhere; this module puts them next to the run's ratios to its fp16 (or bf16) row, for the runs whose model has
the guide's shape (``# applies_to:`` in the file names architectures, matched against ``random:<name>`` or the
model's name). A published range ``a-b`` is kept for display; its ratio uses the midpoint.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

REF_DIR = Path(__file__).parent / "references"
# published column -> (this run's column, what it is, as a header)
METRICS = {
    "vram_gb": ("peak_gpu_nvml_gb", "VRAM (nvidia-smi peak)"),
    "ram_gb": ("peak_rss_gb", "RAM (peak RSS)"),
    "load_s": ("load_read_s", "load"),
    "short_s": ("e2e_short_s", "short answer"),
    "long_s": ("e2e_long_s", "long answer"),
}


@dataclass
class Guide:
    name: str                      # file stem
    title: str
    applies_to: list[str]
    source: str
    rows: list[dict] = field(default_factory=list)   # variant, compare_with (list), metric -> (lo, hi) or None

    def baseline(self) -> dict:
        return next(r for r in self.rows if r["variant"] == "fp16")

    def matches(self, model: str) -> bool:
        name = model.split(":", 1)[1] if model.startswith("random:") else model
        return Path(name).stem.lower() in self.applies_to


def parse_range(text: str) -> tuple[float, float] | None:
    """'12-13' -> (12, 13); '5' -> (5, 5); '' -> None."""
    text = (text or "").strip()
    if not text:
        return None
    lo, _, hi = text.partition("-")
    return float(lo), float(hi or lo)


def midpoint(r: tuple[float, float] | None) -> float | None:
    return None if r is None else (r[0] + r[1]) / 2


def load_guide(path: Path) -> Guide:
    head: dict[str, list[str]] = {}
    lines = path.read_text().splitlines()
    key = None
    for ln in lines:
        if not ln.startswith("#"):
            continue
        body = ln[1:].strip()
        k, sep, v = body.partition(":")
        if sep and k in ("title", "applies_to", "source"):
            key = k
            head[key] = [v.strip()]
        elif key:
            head[key].append(body)
    data = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    rows = []
    for r in csv.DictReader(data):
        row = {"variant": r["variant"], "compare_with": r["compare_with"].split()}
        row.update({m: parse_range(r.get(m, "")) for m in (*METRICS, "min_vram_gb")})
        rows.append(row)
    return Guide(name=path.stem, title=" ".join(head.get("title", [path.stem])),
                 applies_to=" ".join(head.get("applies_to", [])).replace(",", " ").split(),
                 source=" ".join(head.get("source", [])), rows=rows)


def load_guides() -> list[Guide]:
    return [load_guide(p) for p in sorted(REF_DIR.glob("*_guide.csv"))]


def guide_ratios(guide: Guide, rows: list[dict]) -> list[dict]:
    """One entry per (published level, variant of this run): the published ratio to fp16 and this run's.

    Uses the run's eager batch-1 rows with status ok; its baseline is fp16, else bf16 (named in ``baseline``)."""
    mine = {r["variant"]: r for r in rows if r.get("status") == "ok" and r.get("batch_size") == 1
            and r.get("decode_mode", "eager") == "eager" and r.get("kv_cache", "default") == "default"
            and guide.matches(str(r.get("model", "")))}
    base_v = "fp16" if "fp16" in mine else "bf16" if "bf16" in mine else None
    if base_v is None:
        return []
    base, ref_base = mine[base_v], guide.baseline()
    out = []
    for level in guide.rows:
        for variant in level["compare_with"]:
            r = mine.get(variant)
            if r is None:
                continue
            entry = {"level": level["variant"], "variant": variant, "baseline": base_v}
            for metric, (col, _) in METRICS.items():
                pub, pub0 = midpoint(level[metric]), midpoint(ref_base[metric])
                entry[f"published_{metric}"] = level[metric]
                entry[f"published_{metric}_ratio"] = pub / pub0 if pub is not None and pub0 else None
                ours, ours0 = r.get(col), base.get(col)
                entry[f"run_{metric}"] = ours
                entry[f"run_{metric}_ratio"] = ours / ours0 if ours is not None and ours0 else None
            out.append(entry)
    return out


def gaps(entries: list[dict], threshold: float = 0.15) -> list[tuple[str, str, float, float]]:
    """(variant, metric, published ratio, run ratio) where the run's ratio is more than ``threshold`` away from
    the published one (relative to the published ratio)."""
    out = []
    for e in entries:
        for metric in METRICS:
            pub, run = e[f"published_{metric}_ratio"], e[f"run_{metric}_ratio"]
            if pub and run is not None and abs(run - pub) / pub > threshold:
                out.append((e["variant"], metric, pub, run))
    return out


def fmt_range(r: tuple[float, float] | None) -> str:
    if r is None:
        return "–"
    return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g}–{r[1]:g}"


def guide_section(guide: Guide, rows: list[dict]) -> str:
    """HTML for one guide: its published values and ratios beside this run's, and the gaps over 15%."""
    import html

    from .html_parts import fmt_cell, html_table
    entries = guide_ratios(guide, rows)
    if not entries:
        return ""
    metrics = [m for m in METRICS if any(e[f"published_{m}"] is not None for e in entries)]
    header = ["variant", "published as"]
    for m in metrics:
        label = METRICS[m][1]
        header += [f"{label}: published", "÷ fp16 (published)", "÷ fp16 (this run)"]
    body = []
    for e in entries:
        cells = [html.escape(e["variant"]), html.escape(e["level"])]
        for m in metrics:
            cells += [fmt_range(e[f"published_{m}"]), fmt_cell(e[f"published_{m}_ratio"]),
                      fmt_cell(e[f"run_{m}_ratio"])]
        body.append(cells)
    far = gaps(entries)
    gap_txt = ("; ".join(f"{v} {METRICS[m][1]} {run:.2f}× vs {pub:.2f}×" for v, m, pub, run in far)
               if far else "none")
    base = entries[0]["baseline"]
    return (f"<h3>{html.escape(guide.title)}</h3><p class='small'>{html.escape(guide.source)} This run's ratios "
            f"are to its {base} row (eager, batch 1). Ours: VRAM = nvidia-smi's peak for the worker process, RAM = "
            f"its peak RSS, load = reading a ready checkpoint (bitsandbytes quantizes while loading).</p>"
            + html_table(header, body, left=(0, 1))
            + f"<p class='small'>Ratios more than 15% from the published one: {html.escape(gap_txt)}.</p>")


def guides_html(rows: list[dict]) -> str:
    parts = [guide_section(g, rows) for g in load_guides()]
    return "".join(p for p in parts if p)
