"""One zip of a results folder (csv + json + html) for a download button or an issue attachment."""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

FILES = ("results.csv", "results.json", "report.html")


def make_zip(out_dir: str | Path) -> str:
    """Write ``<out_dir>/<name>.zip`` (atomically) with the files the folder has; returns its path."""
    out = Path(out_dir)
    present = [out / f for f in FILES if (out / f).exists()]
    if not present:
        raise FileNotFoundError(f"{out} has none of {', '.join(FILES)}: nothing to bundle")
    target = out / f"{out.resolve().name}.zip"
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".zip", dir=out)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in present:
                z.write(f, arcname=f"{out.resolve().name}/{f.name}")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(target)
