"""The one inference path for exported bundles: fast tokenizer -> ONNX Runtime.

Used by the evaluate stage, the benchmark, the registered pyfunc model and the CLI,
so the numbers measured are the numbers served. Texts are tokenized once with the
Rust tokenizer, sorted by length so each batch pads only to its own longest
sentence, run through one session call per batch (pooling and normalisation are in
the graph) and returned in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embopt.bundle import read_manifest, variant_file
from embopt.errors import EmboptError

log = logging.getLogger(__name__)


def session_options(threads: int | None = None, graph_optimization: str = "all"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts.graph_optimization_level = levels[graph_optimization]
    return opts


def available_providers(requested: Sequence[str] | None) -> list[str]:
    """Requested providers that this onnxruntime build has, in order; CPU always last."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    chosen = []
    for p in requested or ["CPUExecutionProvider"]:
        if p in have:
            chosen.append(p)
        else:
            log.warning("execution provider %s is not available in this onnxruntime build (have: %s)",
                        p, ", ".join(have))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def load_tokenizer(bundle: Path, max_seq_length: int):
    from tokenizers import Tokenizer

    path = Path(bundle) / "tokenizer.json"
    if not path.exists():
        raise EmboptError(f"{path}: tokenizer file not found")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # we pad per length-sorted batch ourselves
    tok.enable_truncation(max_length=max_seq_length)
    return tok


class Embedder:
    """Embed lists of strings with an exported bundle.

    Args:
        bundle: folder with manifest.json, tokenizer.json and onnx/ files.
        variant: manifest variant name (default: the manifest's default_variant).
        threads: ORT intra-op threads (None: ORT's default).
        batch_size: sentences per session call.
        max_seq_length: truncation length (default: the manifest's).
        providers: ORT execution providers in order of preference.
    """

    def __init__(
        self,
        bundle: Path | str,
        variant: str | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        providers: Sequence[str] | None = None,
        onnx_path: Path | str | None = None,
    ):
        import onnxruntime as ort

        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        if onnx_path is not None:
            self.variant, self.onnx_path = variant or Path(onnx_path).stem, Path(onnx_path)
        else:
            self.variant, self.onnx_path = variant_file(self.bundle, self.manifest, variant)
        if not self.onnx_path.exists():
            raise EmboptError(f"{self.onnx_path}: ONNX file not found")
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length or int(self.manifest["max_seq_length"])
        self.tokenizer = load_tokenizer(self.bundle, self.max_seq_length)
        pad = self.tokenizer.token_to_id(self.manifest.get("pad_token", "[PAD]"))
        self.pad_id = int(pad) if pad is not None else 0
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path), sess_options=session_options(threads), providers=available_providers(providers)
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise EmboptError(f"{self.onnx_path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
        self.output_name = self.session.get_outputs()[0].name
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return self.session.run([self.output_name], {"input_ids": input_ids, "attention_mask": mask})[0]

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` as float32 (n, dim), in input order."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a single string")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = self.tokenize(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        starts = range(0, n, self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embed", unit="batch")
        for start in starts:
            idx = order[start : start + self.batch_size]
            out[idx] = self._run([ids[i] for i in idx])
        return out

    __call__ = embed
