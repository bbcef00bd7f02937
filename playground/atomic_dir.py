"""Folders that appear whole or not at all (converted models, quantized checkpoints, random-weight models)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def building(target: str | Path) -> Iterator[Path]:
    """``with building(target) as tmp:`` write into ``tmp`` (a fresh folder beside ``target``); when the block
    ends normally ``tmp`` replaces ``target`` by rename, otherwise it is removed and ``target`` is left as it was."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)      # mkdtemp makes it 0700; the final folder should look like any other
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` onto ``out``: one rename when ``out`` is absent, else swap through a backup name."""
    out = Path(out).resolve()
    if not out.exists():
        os.replace(tmp, out)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(backup)
    os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)
