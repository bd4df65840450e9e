"""Atomic writes: outputs appear complete or not at all.

Every stage writes into a temporary sibling and renames it into place, so a crash
or a failed check never leaves a half-written model folder or metrics file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    try:
        with open(tmp_name, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed and with a trailing newline (diff-friendly)."""
    with atomic_file(Path(path)) as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def dir_size_mb(path: Path, patterns: tuple[str, ...] = ("*",)) -> float:
    """Size on disk of the files under ``path`` matching any of ``patterns`` (MB = 1e6 bytes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    total = 0
    seen: set[Path] = set()
    for pat in patterns:
        for f in path.rglob(pat):
            if f.is_file() and f not in seen:
                seen.add(f)
                total += f.stat().st_size
    return total / 1e6


@contextlib.contextmanager
def quiet_root_logger(level: int = 30) -> Iterator[None]:
    """Raise the root logger to WARNING for a block.

    onnxruntime's optimizer and quantizer log every fusion at INFO on the root
    logger; the stage logs one summary line instead.
    """
    import logging

    root = logging.getLogger()
    old = root.level
    root.setLevel(max(level, old))
    try:
        yield
    finally:
        root.setLevel(old)
