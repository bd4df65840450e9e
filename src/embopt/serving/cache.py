"""Embedding cache: an in-memory LRU (bounded in entries and in bytes) in front of an optional SQLite store.

Queries repeat (search boxes, deduplicated feeds, retries), and a repeated text needs no tokenizer
and no model run. Entries are keyed by the model key (graph, tokenizer, truncation and PCA hashes,
see :attr:`embopt.serving.runtime.Embedder.key`) and the exact text, so a new model never reads an
old model's vectors. The store is safe for several processes sharing one file: WAL journal, a busy
timeout, one transaction per batch of writes, and ``INSERT OR IGNORE`` (a key always maps to the
same vector, so the first writer wins and no row is half-written or lost). A store that breaks
while serving (corrupted page, read-only file or folder, full disk) never fails a request: the
failing half (reads or writes) is bypassed for the rest of the process with one warning, and the
LRU keeps working. Only the standard library and numpy are used.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embopt.errors import EmboptError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (model, text)
)
"""
_CHUNK = 500  # SQLite host-parameter limit is 999 on old builds
_ENTRY_OVERHEAD = 100  # bytes per LRU entry beyond the text and the vector (dict slot, array header)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def _locked(exc: sqlite3.Error) -> bool:
    """Another process held the lock past the timeout."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class EmbeddingCache:
    """LRU of float32 vectors by exact text, with an optional SQLite store shared across runs and processes.

    In memory: at most ``max_entries``, and ``max_bytes`` of texts, vectors and per-entry overhead (None: no
    byte bound). ``path``: the SQLite store (None: memory only), bounded to ``max_rows`` (oldest first; None:
    unbounded). ``timeout``: seconds a writer waits for another process's lock before giving up.
    """

    def __init__(self, max_entries: int = 100_000, path: Path | str | None = None,
                 max_rows: int | None = None, timeout: float = 30.0,
                 max_bytes: int | None = DEFAULT_MAX_BYTES):
        if max_entries < 0:
            raise EmboptError(f"cache max_entries must be >= 0, got {max_entries}")
        if max_bytes is not None and max_bytes < 0:
            raise EmboptError(f"cache max_bytes must be >= 0, got {max_bytes}")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes) if max_bytes is not None else None
        self._mem_bytes = self._since_trim = 0
        self._reads_off = self._writes_off = False  # set once when the store fails (see _bypass)
        self.path = Path(path) if path is not None else None
        self.max_rows, self.timeout = max_rows, timeout
        self.model: str | None = None
        self.dim: int | None = None
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self.hits = self.disk_hits = self.misses = self.evictions = self.writes = 0
        if self.path is not None:
            self._connect()

    def _bypass(self, what: str, exc: BaseException) -> None:
        """Stop using the store for ``what`` (``writes`` or ``both``) in this process; warn once."""
        if what == "both" and not self._reads_off:
            log.warning("%s: embedding cache store unreadable (%s); bypassing it, serving without it",
                        self.path, exc)
        elif what == "writes" and not self._writes_off:
            log.warning("%s: embedding cache store not writable (%s); no more writes to it", self.path, exc)
        self._reads_off = self._reads_off or what == "both"
        self._writes_off = True

    @property
    def store_ok(self) -> bool:
        """True while the SQLite store is used for both reads and writes."""
        return self.path is not None and not (self._reads_off or self._writes_off)

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross fork(): a served model may be loaded before workers fork.
        if self._conn is not None and self._conn_pid == os.getpid():
            return self._conn
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.executescript(f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; {SCHEMA}")
        except sqlite3.DatabaseError as exc:
            raise EmboptError(f"{self.path}: cannot open embedding cache ({exc})") from None
        self._conn, self._conn_pid = conn, os.getpid()
        return conn

    def bind(self, model: str, dim: int) -> None:
        """Set the model key and vector size; entries of another model are dropped from memory."""
        with self._lock:
            if model != self.model:
                self._mem.clear()
                self._mem_bytes = 0
            self.model, self.dim = model, int(dim)

    def _check_bound(self) -> None:
        if self.model is None or self.dim is None:
            raise EmboptError("embedding cache is not bound to a model (use Embedder(cache=...))")

    def get_many(self, texts: Sequence[str], out: np.ndarray) -> dict[str, list[int]]:
        """Copy cached vectors into ``out`` rows; return the misses as ``{text: [row, ...]}``."""
        self._check_bound()
        missing: dict[str, list[int]] = {}
        with self._lock:
            mem = self._mem
            for i, text in enumerate(texts):
                vec = mem.get(text)
                if vec is None:
                    missing.setdefault(text, []).append(i)
                else:
                    mem.move_to_end(text)
                    out[i] = vec
            self.hits += len(texts) - sum(map(len, missing.values()))
            if missing and self.path is not None and not self._reads_off:
                for text, vec in self._load(list(missing)).items():
                    rows = missing.pop(text)
                    out[rows] = vec
                    self.disk_hits += len(rows)
                    self._remember(text, vec)
            self.misses += sum(map(len, missing.values()))
        return missing

    def get(self, text: str) -> np.ndarray | None:
        """The cached vector of one text, or None."""
        self._check_bound()
        out = np.empty((1, self.dim), dtype=np.float32)
        return None if self.get_many([text], out) else out[0]

    def _load(self, texts: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        try:
            conn = self._connect()
        except EmboptError as exc:
            self._bypass("both", exc)
            return found
        for start in range(0, len(texts), _CHUNK):
            chunk = texts[start: start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            try:
                rows = conn.execute(
                    f"SELECT text, dim, vec FROM embeddings WHERE model = ? AND text IN ({marks})",
                    [self.model, *chunk]).fetchall()
            except sqlite3.Error as exc:  # corrupted page ("database disk image is malformed") and the like
                if _locked(exc):  # locked past the timeout: treat as misses
                    log.warning("%s: cache read skipped (%s)", self.path, exc)
                else:
                    self._bypass("both", exc)
                return found
            for text, dim, blob in rows:
                if dim == self.dim and len(blob) == self.dim * 4:
                    found[text] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    @staticmethod
    def _entry_bytes(text: str, vec: np.ndarray) -> int:
        return sys.getsizeof(text) + vec.nbytes + _ENTRY_OVERHEAD

    def _remember(self, text: str, vec: np.ndarray) -> None:
        size = self._entry_bytes(text, vec)
        limit = self.max_bytes if self.max_bytes is not None else float("inf")
        if self.max_entries == 0 or size > limit:  # one entry larger than the whole bound is not kept
            return
        mem = self._mem
        old = mem.pop(text, None)
        if old is not None:
            self._mem_bytes -= self._entry_bytes(text, old)
        mem[text] = vec
        self._mem_bytes += size
        while len(mem) > self.max_entries or self._mem_bytes > limit:
            t, v = mem.popitem(last=False)
            self._mem_bytes -= self._entry_bytes(t, v)
            self.evictions += 1

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` for ``texts[i]`` in memory and, if configured, in the store."""
        self._check_bound()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"expected vectors of shape ({len(texts)}, {self.dim}), got {vectors.shape}")
        with self._lock:
            for text, vec in zip(texts, vectors, strict=True):
                self._remember(text, vec.copy())
            if self.path is not None and not self._writes_off:
                try:
                    self._store(texts, vectors)
                except (sqlite3.Error, EmboptError) as exc:  # read-only file, corrupted page, full disk
                    self._bypass("writes", exc)

    def _store(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        conn = self._connect()
        rows = [(self.model, t, self.dim, v.tobytes()) for t, v in zip(texts, vectors, strict=True)]
        for attempt in range(5):
            try:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not halfway through
                with conn:  # COMMIT, or ROLLBACK on an error
                    conn.executemany(
                        "INSERT OR IGNORE INTO embeddings (model, text, dim, vec) VALUES (?, ?, ?, ?)", rows)
                break
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        else:
            log.warning("%s: %d cache writes dropped after waiting for the lock", self.path, len(rows))
            return
        self.writes += len(rows)
        self._since_trim += len(rows)
        if self.max_rows is not None and self._since_trim >= max(1, self.max_rows // 10):
            self.trim()

    def trim(self) -> int:
        """Delete the oldest rows beyond ``max_rows``; returns how many were deleted."""
        if self.path is None or self.max_rows is None:
            return 0
        with self._lock:
            conn = self._connect()
            self._since_trim = 0
            conn.execute("BEGIN IMMEDIATE")
            with conn:
                excess = conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] - self.max_rows
                if excess > 0:
                    conn.execute("DELETE FROM embeddings WHERE rowid IN "
                                 "(SELECT rowid FROM embeddings ORDER BY rowid LIMIT ?)", (excess,))
            return max(excess, 0)

    def stats(self) -> dict[str, float]:
        """Hits (memory and store), misses, hit rate, entries in memory, evictions, store writes."""
        with self._lock:
            served = self.hits + self.disk_hits
            total = served + self.misses
            return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses,
                    "hit_rate": served / total if total else 0.0, "entries": len(self._mem),
                    "max_entries": self.max_entries, "bytes": self._mem_bytes, "max_bytes": self.max_bytes,
                    "evictions": self.evictions, "writes": self.writes, "store_ok": self.store_ok}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __len__(self) -> int:
        return len(self._mem)
