"""Atomic writes: outputs appear complete or not at all.

Every stage writes into a temporary sibling (``.<name>.tmp-*``) and renames it into place, so a
crash or a failed check never leaves a half-written model folder or metrics file behind. The
temporary is removed on any exception, KeyboardInterrupt included; a SIGTERM does the same once
:func:`exit_on_sigterm` turned it into an exception. Temporaries are created like any file or folder
(0644/0755 under umask 022), not with the private 0600/0700 of ``mkstemp``/``mkdtemp``, so a shared
model folder stays readable. A SIGKILL leaves the temporary behind; its name carries the writer's
pid, and the next write of the same target removes the temporaries of writers no longer alive.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def exit_on_sigterm() -> Any:
    """Turn SIGTERM into ``SystemExit(143)`` so ``finally`` and ``except`` blocks run: temporary
    outputs are removed and runs can be closed, as on Ctrl-C. Only from the main thread: returns
    the previous handler (for ``signal.signal(signal.SIGTERM, previous)``), or None off it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum, _frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _raise)


def _pid_alive(pid: int) -> bool:
    try:
        with contextlib.suppress(PermissionError):  # another user's live process
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>`` left next to ``target`` by killed writers."""
    target = Path(target)
    pattern = glob.escape(str(target.parent / f".{target.name}."))
    for path in glob.glob(pattern + "tmp-*") + glob.glob(pattern + "old-*"):
        pid = Path(path).name[len(target.name) + 6:].split("-")[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue  # a writer still at work (or a reused pid: removed by a later write)
        log.warning("removing %s, left by a killed run", path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


def _temporary(target: Path) -> Path:
    """A fresh ``.<name>.tmp-<pid>-<random>`` path next to ``target``, for the caller to create."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary(target)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None and not target.exists():
                os.replace(old, target)  # put the previous output back
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary(target)
    fh = open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8")
    try:
        with fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed and with a trailing newline (diff-friendly)."""
    with atomic_file(Path(path)) as fh:
        fh.write(json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dir_size_mb(path: Path, patterns: tuple[str, ...] = ("*",)) -> float:
    """Size on disk of the files under ``path`` matching any of ``patterns`` (MB = 1e6 bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else {f for pat in patterns for f in path.rglob(pat) if f.is_file()}
    return sum(f.stat().st_size for f in files) / 1e6


@contextlib.contextmanager
def quiet_root_logger(level: int = 30) -> Iterator[None]:
    """Raise the root logger to ``level`` (WARNING) for a block.

    onnxruntime's optimizer and quantizer log every fusion at INFO on the root logger; the stage logs one
    summary line instead.
    """
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(level, old))
    try:
        yield
    finally:
        root.setLevel(old)
