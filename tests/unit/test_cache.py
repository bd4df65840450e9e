"""Embedding cache: hits and misses, the LRU bound, the SQLite store, two processes on one store."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import numpy as np
import pytest
import tiny

from embopt.errors import EmboptError
from embopt.serving.cache import EmbeddingCache
from embopt.serving.runtime import Embedder


@pytest.fixture()
def embedder(tiny_bundle) -> Embedder:
    return Embedder(tiny_bundle, variant="onnx_fp32", threads=1, batch_size=4)


def test_hits_skip_the_tokenizer_and_return_the_same_vectors(embedder, monkeypatch):
    texts = tiny.sentences(10, seed=1)
    ref = embedder.embed(texts)
    embedder.attach_cache(EmbeddingCache(max_entries=100))
    first = embedder.embed(texts[:6])
    assert embedder.cache.stats()["misses"] == 6 and embedder.cache.stats()["hits"] == 0

    calls = []
    real = embedder.tokenize
    monkeypatch.setattr(embedder, "tokenize", lambda t: calls.append(list(t)) or real(t))
    mixed = [texts[7], texts[0], texts[5], texts[8], texts[0]]
    got = embedder.embed(mixed)
    np.testing.assert_allclose(got, ref[[7, 0, 5, 8, 0]], atol=2e-5)
    np.testing.assert_array_equal(got[[1, 2, 4]], first[[0, 5, 0]])  # hits: the stored vectors, bit for bit
    assert calls == [[texts[7], texts[8]]]  # only the misses were tokenized, each once
    s = embedder.cache.stats()
    assert (s["hits"], s["misses"], s["entries"]) == (3, 6 + 2, 8)


def test_duplicates_in_one_call_are_embedded_once(embedder, monkeypatch):
    embedder.attach_cache(EmbeddingCache())
    calls = []
    real = embedder.tokenize
    monkeypatch.setattr(embedder, "tokenize", lambda t: calls.append(list(t)) or real(t))
    out = embedder.embed(["a dog .", "the cat .", "a dog ."])
    assert calls == [["a dog .", "the cat ."]]
    np.testing.assert_array_equal(out[0], out[2])


def test_lru_bound_evicts_least_recently_used(embedder):
    cache = EmbeddingCache(max_entries=3)
    embedder.attach_cache(cache)
    a, b, c, d = tiny.sentences(4, seed=2)
    embedder.embed([a, b, c])
    embedder.embed([a])  # a is now the most recently used
    embedder.embed([d])  # evicts b, the least recently used
    assert len(cache) == 3 and cache.stats()["evictions"] == 1
    assert cache.get(b) is None
    assert cache.get(a) is not None and cache.get(c) is not None and cache.get(d) is not None


def test_zero_entries_disables_memory(embedder):
    cache = EmbeddingCache(max_entries=0)
    embedder.attach_cache(cache)
    embedder.embed(["a dog ."])
    embedder.embed(["a dog ."])
    assert len(cache) == 0 and cache.stats()["hits"] == 0 and cache.stats()["misses"] == 2


def test_sqlite_store_persists_across_instances(embedder, tmp_path):
    path = tmp_path / "cache.sqlite"
    texts = tiny.sentences(12, seed=3)
    ref = embedder.embed(texts)
    embedder.attach_cache(EmbeddingCache(path=path))
    embedder.embed(texts)
    embedder.cache.close()

    other = Embedder(embedder.bundle, variant="onnx_fp32", threads=1, cache=EmbeddingCache(path=path))
    other.tokenize = None  # every row must come from the store: the tokenizer is never reached
    np.testing.assert_allclose(other.embed(texts[::-1]), ref[::-1], atol=2e-5)
    assert other.cache.stats()["disk_hits"] == 12 and other.cache.stats()["misses"] == 0


def _stored_rows(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]


def test_store_is_keyed_by_model(embedder, tiny_bundle, tmp_path):
    path = tmp_path / "cache.sqlite"
    embedder.attach_cache(EmbeddingCache(path=path))
    embedder.embed(["a dog ."])
    int8 = Embedder(tiny_bundle, variant="onnx_int8", threads=1, cache=EmbeddingCache(path=path))
    assert int8.key != embedder.key
    int8.embed(["a dog ."])
    assert int8.cache.stats()["disk_hits"] == 0 and int8.cache.stats()["misses"] == 1
    assert _stored_rows(path) == 2
    shorter = Embedder(tiny_bundle, variant="onnx_fp32", max_seq_length=8)
    assert shorter.key != embedder.key  # truncation changes embeddings, so it is part of the key


def test_store_bound_trims_oldest_rows(tmp_path):
    cache = EmbeddingCache(path=tmp_path / "c.sqlite", max_rows=5)
    cache.bind("m", 2)
    for i in range(12):
        cache.put_many([f"t{i}"], np.full((1, 2), i, dtype=np.float32))
    cache.trim()
    assert _stored_rows(tmp_path / "c.sqlite") == 5
    fresh = EmbeddingCache(path=tmp_path / "c.sqlite")
    fresh.bind("m", 2)
    assert fresh.get("t0") is None and fresh.get("t11") is not None


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EmboptError, match="bad.sqlite: cannot open embedding cache"):
        EmbeddingCache(path=bad)


def test_unbound_cache_is_refused():
    with pytest.raises(EmboptError, match="not bound"):
        EmbeddingCache().get("x")


def _vector(text: str, dim: int) -> np.ndarray:
    seed = sum(map(ord, text))
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _writer(path: str, worker: int, n: int, dim: int) -> None:
    cache = EmbeddingCache(path=path, timeout=60)
    cache.bind("shared-model", dim)
    # Half the texts are written by both workers, half by one only; many small transactions.
    texts = [f"shared {i}" for i in range(n)] + [f"worker {worker} text {i}" for i in range(n)]
    for start in range(0, len(texts), 7):
        chunk = texts[start: start + 7]
        cache.put_many(chunk, np.stack([_vector(t, dim) for t in chunk]))
    cache.close()


def test_two_processes_write_the_same_store(tmp_path):
    path, n, dim = str(tmp_path / "shared.sqlite"), 150, 16
    EmbeddingCache(path=path).close()  # create the schema once, as a first run would
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, n, dim)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT text, dim, vec FROM embeddings WHERE model = 'shared-model'").fetchall()
    expected = {f"shared {i}" for i in range(n)} | {f"worker {w} text {i}" for w in (0, 1) for i in range(n)}
    assert {r[0] for r in rows} == expected and len(rows) == len(expected)  # nothing lost, nothing doubled
    for text, d, blob in rows:
        assert d == dim
        np.testing.assert_array_equal(np.frombuffer(blob, dtype=np.float32), _vector(text, dim))


# --------------------------------------------------------------------------- bounds and broken stores


def test_lru_is_bounded_in_bytes(embedder):
    """Long texts fill memory long before the entry bound: the byte bound evicts them."""
    texts = [f"{i} " + "a dog runs on the beach . " * 40 for i in range(12)]  # ~1 KB each
    cache = EmbeddingCache(max_entries=1000, max_bytes=5_000)
    embedder.attach_cache(cache)
    embedder.embed(texts)
    s = cache.stats()
    assert 0 < s["entries"] < 12 and s["evictions"] == 12 - s["entries"]
    assert s["bytes"] <= 5_000 and s["max_bytes"] == 5_000
    assert cache.get(texts[-1]) is not None and cache.get(texts[0]) is None  # the oldest went first
    tiny_cache = EmbeddingCache(max_bytes=10)  # one entry larger than the bound: not kept at all
    embedder.attach_cache(tiny_cache)
    embedder.embed(texts[:2])
    assert len(tiny_cache) == 0 and tiny_cache.stats()["bytes"] == 0


def test_default_byte_bound_is_sane():
    assert EmbeddingCache().max_bytes == 256 * 1024 * 1024
    with pytest.raises(EmboptError, match="max_bytes must be >= 0"):
        EmbeddingCache(max_bytes=-1)


def _corrupt_pages(path) -> None:
    """Overwrite every page but the first (the schema) with garbage: reads then hit a malformed page."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 3 * page
    data[page:] = bytes(range(256)) * ((len(data) - page) // 256) + bytes((len(data) - page) % 256)
    path.write_bytes(bytes(data))


def _read_only(cache: EmbeddingCache) -> None:
    """What a read-only file or folder does to writes (chmod does not stop root, which runs CI)."""
    cache._connect().execute("PRAGMA query_only = ON")


@pytest.mark.parametrize("damage", ["corrupted pages", "read-only"])
def test_broken_store_is_bypassed_with_one_warning(embedder, tmp_path, caplog, damage):
    path = tmp_path / "cache.sqlite"
    texts = tiny.sentences(40, seed=12)
    ref = embedder.embed(texts)
    filler = EmbeddingCache(path=path)
    filler.bind("another model", 256)
    filler.put_many([f"filler {i}" for i in range(60)], np.ones((60, 256), np.float32))  # several pages
    filler.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if damage == "corrupted pages":
        _corrupt_pages(path)
    cache = EmbeddingCache(path=path, max_entries=0)  # no memory: every call goes to the store
    if damage == "read-only":
        _read_only(cache)
    embedder.attach_cache(cache)
    with caplog.at_level("WARNING", logger="embopt.serving.cache"):
        for _ in range(3):
            np.testing.assert_allclose(embedder.embed(texts), ref, atol=2e-5)  # requests keep working
    warnings = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert not cache.stats()["store_ok"]


def test_swapped_onnx_file_is_not_served_old_vectors(tiny_bundle, tmp_path):
    """The key hashes the ONNX bytes loaded, not the manifest's record: a replaced file misses."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = tmp_path / "cache.sqlite"
    texts = tiny.sentences(8, seed=13)
    old = Embedder(bundle, variant="onnx_fp32", threads=1, cache=EmbeddingCache(path=path)).embed(texts)
    int8_ref = Embedder(bundle, variant="onnx_int8", threads=1).embed(texts)
    shutil.copy2(bundle / "onnx" / "model_qint8.onnx", bundle / "onnx" / "model.onnx")  # manifest untouched
    swapped = Embedder(bundle, variant="onnx_fp32", threads=1, cache=EmbeddingCache(path=path))
    got = swapped.embed(texts)
    assert swapped.cache.stats()["disk_hits"] == 0
    np.testing.assert_allclose(got, int8_ref, atol=2e-5)
    assert np.abs(got - old).max() > 1e-3
