"""The one inference path for exported bundles: fast tokenizer -> ONNX Runtime.

Used by the evaluate stage, the benchmark, the registered pyfunc model and the CLI, so the
numbers measured are the numbers served. Per call: (1) optional cache look-up, hits skip the rest;
(2) each text tokenized once, unpadded, truncated to ``max_seq_length`` (the Rust tokenizer, behind
a chunk cache for BERT WordPiece: :mod:`embopt.serving.wordpiece`); (3) texts sorted by token
count, so a batch pads only to its own longest, its int64 arrays filled by one vectorised numpy
assignment; (4) one session call per batch, pooling and L2 normalisation inside the graph (another
manifest ``backend``'s session here: :mod:`embopt.serving.backends`); (5) optional PCA, float32
rows written back in input order. Everything outside (4) is overhead: :attr:`Embedder.timings`.
Only numpy, onnxruntime and tokenizers are needed (the served model ships this module): ``onnx``
only to pool a token-level graph.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from embopt.errors import EmboptError
from embopt.serving.backends import backend_of, open_session
from embopt.serving.bundle import read_manifest, sha256, variant_file
from embopt.serving.wordpiece import CachedWordPiece

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")
MODES = ("bulk", "latency")
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows of the input, input_ids, attention_mask
_FIRST = np.zeros(1, dtype=np.intp)


def session_options(threads: int | None = None, graph_optimization: str = "all"):
    """ORT options: ``threads`` intra-op threads (None: one per physical core), one inter-op thread."""
    import onnxruntime as ort

    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise EmboptError(f"graph_optimization '{graph_optimization}' is not one of "
                          f"{', '.join(GRAPH_OPTIMIZATION)}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = {"disable": "DISABLE_ALL"}.get(graph_optimization, f"ENABLE_{graph_optimization.upper()}")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    opts.log_severity_level = 3  # ORT warns about unused initializers of fused graphs; not actionable
    return opts


def available_providers(requested: Sequence[str] | None) -> list[str]:
    """Requested providers that this onnxruntime build has, in order; CPU always last."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    for p in requested or ():
        if p not in have:
            log.warning("execution provider %s is not available in this onnxruntime build (have: %s)",
                        p, ", ".join(have))
    chosen = [p for p in requested or () if p in have]
    return chosen + ["CPUExecutionProvider"] * ("CPUExecutionProvider" not in chosen)


def _describe(value: Any) -> str:
    """A short description of a value that is not a string, for error messages."""
    if value is None or (isinstance(value, float) and value != value):
        return "null"
    shown = repr(value)
    return f"{type(value).__name__} {shown[:37] + '...' if len(shown) > 40 else shown}"


def check_texts(texts: Sequence[Any], max_bytes: int | None = None) -> list[str]:
    """``texts`` as a list of ``str``, or an :class:`EmboptError` naming the first row that is not text.

    That row is refused, not embedded as ``str(x)``. ``max_bytes`` bounds the UTF-8 size of all texts
    together.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    if not all(type(t) is str for t in texts):  # noqa: E721 - the fast path; subclasses checked below
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                hint = " (decode bytes to str first)" if isinstance(t, (bytes, bytearray)) else ""
                raise EmboptError(f"row {i}: {_describe(t)} is not a string{hint}")
        texts = [str(t) for t in texts]  # str subclasses (numpy.str_) as plain str
    # UTF-8 takes at most 4 bytes a character: count the bytes only when it matters.
    if max_bytes is not None and sum(map(len, texts)) * 4 > max_bytes:
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if size > max_bytes:
            raise EmboptError(f"request holds {size:,} bytes of text, over the limit of {max_bytes:,} "
                              "(runtime max_request_bytes); send it in smaller requests")
    return texts


def load_tokenizer(bundle: Path, max_seq_length: int):
    """The bundle's Rust tokenizer, truncating to ``max_seq_length`` tokens (special tokens included)."""
    from tokenizers import Tokenizer

    path = Path(bundle) / "tokenizer.json"
    if not path.exists():
        raise EmboptError(f"{path}: tokenizer file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for malformed files
        raise EmboptError(f"{path}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None
    tok.no_padding()  # we pad per length-sorted batch ourselves
    tok.enable_truncation(max_length=max_seq_length)
    return tok


@dataclass
class Timings:
    """Where the wall time of :meth:`Embedder.embed` went, accumulated over calls (seconds)."""

    calls: int = 0
    sentences: int = 0
    batches: int = 0
    total_s: float = 0.0
    run_s: float = 0.0  # inside InferenceSession.run
    tokenize_s: float = 0.0

    @property
    def overhead_fraction(self) -> float:
        """Share of wall time spent outside the ONNX Runtime session run."""
        return (self.total_s - self.run_s) / self.total_s if self.total_s else 0.0


class Embedder:
    """Embed lists of strings with an exported ``bundle`` (folder with manifest.json, tokenizer.json, onnx/).

    ``variant``: manifest variant (default: the manifest's default_variant); ``onnx_path``: this ONNX
    file instead (same tokenizer). ``threads``: in all (None: one per CPU in bulk mode, ORT's default in
    latency mode). ``batch_size``: sentences per session call (unless ``token_budget``, padded tokens
    per batch); ``max_seq_length``: truncation (default: the manifest's). ``providers``,
    ``graph_optimization`` (``disable``/``basic``/``extended``/``all``): ORT settings.
    ``pca``: optional ``.npz`` (mean, components) projecting to k dims (then L2-normalised).
    ``cache``: an :class:`embopt.serving.cache.EmbeddingCache`; hits skip tokenization and the model.
    ``mode``: ``bulk`` (files, evaluation: one 1-thread session per thread, each pulling the next
    length-sorted batch; ORT and the Rust tokenizer release the GIL) or ``latency`` (serving: one session
    whose threads share every request). ``tokenize_chunk``: texts tokenized at a time, ahead of inference
    in a background thread (0: all at once); ``token_budget`` packs batches as text-embeddings-inference.
    """

    def __init__(self, bundle: Path | str, variant: str | None = None, threads: int | None = None,
                 batch_size: int = 32, max_seq_length: int | None = None,
                 providers: Sequence[str] | None = None, onnx_path: Path | str | None = None,
                 graph_optimization: str = "all", pca: Path | str | None = None, cache: Any = None,
                 mode: str = "bulk", tokenize_chunk: int = 0, token_budget: int | None = None):
        if batch_size < 1:
            raise EmboptError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in MODES:
            raise EmboptError(f"mode '{mode}' is not one of {', '.join(MODES)}")
        if tokenize_chunk < 0 or (token_budget is not None and token_budget < 1):
            raise EmboptError(f"tokenize_chunk must be >= 0 and token_budget >= 1, got {tokenize_chunk} "
                              f"and {token_budget}")
        self.mode, self.tokenize_chunk, self.token_budget = mode, int(tokenize_chunk), token_budget
        workers = int(threads or len(os.sched_getaffinity(0))) if mode == "bulk" else 1
        session_threads = 1 if mode == "bulk" else threads
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        if onnx_path is not None:
            self.variant, self.onnx_path = variant or Path(onnx_path).stem, Path(onnx_path)
        else:
            self.variant, self.onnx_path = variant_file(self.bundle, self.manifest, variant)
        if not self.onnx_path.exists():
            raise EmboptError(f"{self.onnx_path}: ONNX file not found")
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length or self.manifest["max_seq_length"])
        # Cache keys hash the bytes loaded now, not the manifest's record of them: a file swapped
        # after export must not be served the old file's vectors.
        self.tokenizer = load_tokenizer(self.bundle, self.max_seq_length)
        self.tokenizer_sha256 = sha256(self.bundle / "tokenizer.json")
        # A BERT WordPiece tokenizer gets the chunk cache (same ids, a fifth of the time on short text).
        self._wordpiece = CachedWordPiece.for_tokenizer(self.tokenizer)
        pad = self.tokenizer.token_to_id(self.manifest.get("pad_token", "[PAD]"))
        self.pad_id = int(pad) if pad is not None else 0
        self.graph_sha256 = sha256(self.onnx_path)
        entry = self.manifest["variants"].get(self.variant, {})
        recorded, own = entry.get("sha256"), self.bundle / str(entry.get("file", ""))
        if recorded and own.resolve() == self.onnx_path.resolve() and recorded != self.graph_sha256:
            log.warning("%s: file differs from the manifest's sha256 (replaced after export?); "
                        "serving the file as it is now", self.onnx_path)
        weights = self.onnx_path.with_suffix(".bin")
        if self.onnx_path.suffix == ".xml" and weights.exists():  # an OpenVINO IR's weights are beside it
            self.graph_sha256 = hashlib.sha256(f"{self.graph_sha256}|{sha256(weights)}".encode()).hexdigest()
        self.timings = Timings()
        self.backend = backend_of(self.manifest["variants"].get(self.variant), self.onnx_path)
        if self.backend == "onnxruntime":
            self._open_onnxruntime(session_threads, workers, graph_optimization, providers)
        else:  # the backend hook: sessions with run(input_ids, attention_mask) -> pooled rows
            # An OpenVINO infer request serves one thread at a time: one per worker, as for ORT. A
            # static table is read-only numpy: one for all.
            n = workers if self.backend == "openvino" else 1
            self.sessions = [open_session(self.backend, self.onnx_path, session_threads) for _ in range(n)]
            self.session, self.providers, self.model_dim = self.sessions[0], [], self.sessions[0].dim
        self._pca = self._load_pca(Path(pca)) if pca is not None else None
        if self._pca is not None:
            self.dim = int(self._pca["components"].shape[0])
        elif isinstance(self.model_dim, int):
            self.dim = int(self.model_dim)
        else:  # symbolic output dim: ask the graph once
            self.dim = int(self._run(self.session, np.array([[self.pad_id]], dtype=np.int64),
                                     np.ones((1, 1), dtype=np.int64)).shape[1])
        self.cache = None
        if cache is not None:
            self.attach_cache(cache)

    def _open_onnxruntime(self, threads, workers: int, graph_optimization: str, providers) -> None:
        """``workers`` ORT sessions of ``threads`` intra-op threads each (the first is ``self.session``)."""
        import onnxruntime as ort

        self.providers = available_providers(providers)
        new = partial(ort.InferenceSession, sess_options=session_options(threads, graph_optimization),
                      providers=self.providers)
        model: str | bytes = str(self.onnx_path)
        try:
            first = new(model)
            if len(first.get_outputs()[0].shape) == 3:
                # A token-level export (Optimum / sentence-transformers): fold pooling into the graph.
                model = self._pooled_graph()
                first = new(model)
            self.sessions = [first] + [new(model) for _ in range(workers - 1)]
        except EmboptError:
            raise
        except Exception as exc:  # ORT raises its own exception types for bad files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EmboptError(f"{self.onnx_path}: cannot load ONNX model ({reason})") from None
        self.session = first
        names = [i.name for i in first.get_inputs()]
        missing = {"input_ids", "attention_mask"} - set(names)
        if missing:
            raise EmboptError(f"{self.onnx_path}: graph lacks input(s) {', '.join(sorted(missing))}")
        self._extra_inputs = [n for n in names if n not in ("input_ids", "attention_mask")]
        output = first.get_outputs()[0]
        self.output_name, self.model_dim = output.name, output.shape[-1]

    def _pooled_graph(self) -> bytes:
        try:
            import onnx
        except ImportError:  # pragma: no cover - onnx is a core dependency of the pipeline
            raise EmboptError(f"{self.onnx_path}: outputs token embeddings; "
                              "adding pooling needs `pip install onnx`") from None
        from embopt.serving.graph_pooling import add_pooling

        mode = self.manifest.get("pooling", "mean")
        pooled = add_pooling(onnx.load(str(self.onnx_path)), mode, bool(self.manifest.get("normalize", True)))
        log.info("%s outputs token embeddings: %s pooling + L2 normalisation added to the graph",
                 self.onnx_path.name, mode)
        return pooled.SerializeToString()

    def _load_pca(self, path: Path) -> dict[str, np.ndarray]:
        if not path.exists():
            raise EmboptError(f"{path}: PCA file not found")
        self._pca_sha256 = sha256(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                pca = {k: np.asarray(z[k], dtype=np.float32) for k in ("mean", "components")}
        except (KeyError, ValueError, OSError) as exc:
            raise EmboptError(f"{path}: not a PCA .npz with 'mean' and 'components' ({exc})") from None
        if isinstance(self.model_dim, int) and pca["components"].shape[1] != self.model_dim:
            raise EmboptError(f"{path}: PCA expects dim {pca['components'].shape[1]}, "
                              f"model outputs {self.model_dim}")
        pca["components_t"] = np.ascontiguousarray(pca["components"].T)
        return pca

    @property
    def key(self) -> str:
        """What the embeddings depend on (cache keys): the bytes of the graph and tokenizer files as
        loaded (hashed at load, not taken from the manifest), truncation and PCA."""
        pca = self._pca_sha256 if self._pca is not None else ""
        ident = f"{self.graph_sha256}|{self.tokenizer_sha256}|{self.max_seq_length}|{pca}"
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    def attach_cache(self, cache) -> None:
        """Serve repeats from ``cache`` (an :class:`embopt.serving.cache.EmbeddingCache`)."""
        cache.bind(self.key, self.dim)
        self.cache = cache

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated, without padding."""
        if self._wordpiece is not None:
            return self._wordpiece.encode(texts)
        return [e.ids for e in self.tokenizer.encode_batch_fast(list(texts))]  # _fast: no char offsets

    def _run(self, session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.backend != "onnxruntime":
            return session.run(input_ids, attention_mask)
        feeds = {name: np.zeros_like(input_ids) for name in self._extra_inputs}  # token_type_ids: zeros
        feeds.update(input_ids=input_ids, attention_mask=attention_mask)
        return session.run([self.output_name], feeds)[0]

    def _groups(self, order: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
        """``order`` (rows by ascending length) cut into batches: ``batch_size`` rows, or as many as
        fit ``token_budget`` padded tokens (a batch pads to its last, longest row)."""
        if not self.token_budget:
            return [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        cuts, first = [], 0
        for i, length in enumerate(lens[order].tolist()):
            if i > first and (i - first + 1) * length > self.token_budget:
                cuts.append(i)
                first = i
        return np.split(order, cuts)

    def _batches(self, texts: Sequence[str]) -> Iterator[Batch]:
        """Padded, length-sorted batches of ``texts``, tokenized ``tokenize_chunk`` texts at a time."""
        step = self.tokenize_chunk or len(texts)
        for base in range(0, len(texts), step):
            t0 = time.perf_counter()
            ids = self.tokenize(texts[base: base + step])
            self.timings.tokenize_s += time.perf_counter() - t0
            lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            for idx in self._groups(np.argsort(lens, kind="stable"), lens):
                blens = lens[idx]
                mask = np.arange(int(blens[-1])) < blens[:, None]  # ascending: the last row is the longest
                input_ids = np.full(mask.shape, self.pad_id, dtype=np.int64)
                # Row-major boolean assignment fills row by row: the concatenated ids of this batch.
                input_ids[mask] = np.fromiter(chain.from_iterable(ids[i] for i in idx), dtype=np.int64,
                                              count=int(blens.sum()))
                yield idx + base, input_ids, mask.astype(np.int64)

    def _write(self, session, batch: Batch, out: np.ndarray, progress=None) -> float:
        """Run one batch and write its rows of ``out``; returns the seconds inside ``session.run``."""
        rows, input_ids, attention_mask = batch
        t0 = time.perf_counter()
        emb = self._run(session, input_ids, attention_mask)
        seconds = time.perf_counter() - t0
        if self._pca is not None:
            emb = (emb - self._pca["mean"]) @ self._pca["components_t"]
            emb /= np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        out[rows] = emb
        self.timings.batches += 1
        if progress is not None:
            progress.update(len(rows))
        return seconds

    def _embed_one(self, text: str, out: np.ndarray) -> None:
        """Batch 1 (the latency path): no sort, no padding."""
        t0 = time.perf_counter()
        input_ids = np.array(self.tokenize([text]), dtype=np.int64)
        self.timings.tokenize_s += time.perf_counter() - t0
        self.timings.run_s += self._write(self.session, (_FIRST, input_ids, np.ones_like(input_ids)), out)

    def _embed_uncached(self, texts: Sequence[str], out: np.ndarray, progress=None) -> None:
        """Write embeddings of ``texts`` into ``out`` (n, dim), in input order."""
        batches = self._batches(texts)
        if self.tokenize_chunk and len(texts) > self.tokenize_chunk:
            batches = _ahead(batches, 2 * len(self.sessions))
        if len(self.sessions) == 1 or len(texts) <= self.batch_size:
            for batch in batches:
                self.timings.run_s += self._write(self.session, batch, out, progress)
            return
        lock = threading.Lock()

        def work(session) -> float:  # each worker pulls the next batch until none is left
            run_s = 0.0
            while True:
                with lock:
                    batch = next(batches, None)
                if batch is None:
                    return run_s
                run_s += self._write(session, batch, out, progress)

        with ThreadPoolExecutor(len(self.sessions)) as pool:
            run = [f.result() for f in [pool.submit(work, s) for s in self.sessions]]
        # Session seconds per worker that ran, so overhead_fraction still compares with wall time.
        busy = [r for r in run if r > 0]
        self.timings.run_s += sum(busy) / max(len(busy), 1)

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` as float32 (n, dim), in input order."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a single string")
        t0 = time.perf_counter()
        texts = check_texts(texts)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        progress = None
        if show_progress and n:
            from tqdm.auto import tqdm

            progress = tqdm(total=n, desc="embed", unit="sent")
        try:
            if self.cache is not None:
                self._embed_with_cache(texts, out, progress)
            elif n == 1:  # a query: none of the sorting and padding below
                self._embed_one(texts[0], out)
            elif n:
                self._embed_uncached(texts, out, progress)
        except (UnicodeEncodeError, TypeError):  # a lone surrogate ("\ud800" in JSON): not valid Unicode
            for i, t in enumerate(texts):
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise EmboptError(f"row {i}: not valid Unicode ({exc.reason} at character "
                                      f"{exc.start})") from None
            raise
        finally:
            if progress is not None:
                progress.close()
        self.timings.calls += 1
        self.timings.sentences += n
        self.timings.total_s += time.perf_counter() - t0
        return out

    def _embed_with_cache(self, texts: list[str], out: np.ndarray, progress=None) -> None:
        missing = self.cache.get_many(texts, out)  # fills hits, returns {text: [rows]} of misses
        if progress is not None:
            progress.update(len(texts) - sum(map(len, missing.values())))
        if not missing:
            return
        todo = list(missing)  # each distinct missing text is embedded once
        fresh = np.empty((len(todo), self.dim), dtype=np.float32)
        self._embed_uncached(todo, fresh, None)
        for text, vec in zip(todo, fresh, strict=True):
            out[missing[text]] = vec
        if progress is not None:
            progress.update(sum(map(len, missing.values())))
        self.cache.put_many(todo, fresh)

    __call__ = embed

    def reset_timings(self) -> None:
        self.timings = Timings()


def _ahead(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """``items`` produced up to ``depth`` ahead by a thread (tokenization overlaps the inference of
    the batches before it: both release the GIL). Errors reach the consumer."""
    q: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def fill() -> None:
        try:
            for item in items:
                q.put(item)
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(exc)

    threading.Thread(target=fill, daemon=True, name="embopt-tokenize").start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early: let the producer finish its put and see the stop
        stop.set()
        while not q.empty():
            q.get_nowait()
