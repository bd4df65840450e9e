"""int8 candidates of the quantize stage: plan, build, gate against the fp32 parent, fall back, pick.

Each candidate is one recipe (dynamic int8 with a preset, static QDQ with a calibration method)
applied to one fp32 parent (the fused or the unfused graph), and scored on the same STS validation
pairs as its parent; one under the gate goes through the accuracy fallback; the fastest that passes,
up to timing noise (:func:`pick`), becomes ``onnx_int8``, the variant the rest of the pipeline carries
forward.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from embopt.bench.timing import throughput
from embopt.data.sts import StsPair
from embopt.eval.sts import retention, sts_spearman
from embopt.export.calibration import StaticRecipe, quantize_static_qdq
from embopt.export.fallback import FallbackResult, exclude_until_pass, node_sensitivity
from embopt.export.quantize import DynamicRecipe, quantize_recipe, quantized_nodes, resolve_recipe
from embopt.pipeline.promotion import Contender, best

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    name: str  # the variant name it gets when kept, e.g. onnx_int8_dynamic_per_tensor
    kind: str  # dynamic | static
    parent: str  # fused | unfused: which fp32 graph it quantizes
    recipe: DynamicRecipe | StaticRecipe
    file: str  # file name under onnx/
    row: dict[str, Any] = field(default_factory=dict)  # measured: spearman, retention, speed, fallback

    def manifest_entry(self) -> dict[str, Any]:
        entry = {"file": f"onnx/{self.file}", "precision": f"int8-{self.kind}", "recipe": self.name,
                 "parent": self.parent, **asdict(self.recipe)}
        if self.kind == "static":
            entry["calibration_ranges"] = f"calibration/{self.name}.ranges.json"
        if self.row.get("fallback"):
            entry["nodes_kept_fp32"] = self.row["fallback"]["nodes_kept_fp32"]
        return entry


def plan_candidates(p, has_unfused: bool) -> list[Candidate]:
    """Candidates from the ``quantize`` params: the preset's dynamic recipe, extras, static methods."""
    base = resolve_recipe(p.isa, p.per_channel, p.reduce_range, p.weight_type, p.op_types)
    fused = "fused" if p.optimize else "unfused"

    def dyn_name(r: DynamicRecipe, parent: str) -> str:
        return ("onnx_int8_dynamic_" + ("per_channel" if r.per_channel else "per_tensor")
                + ("_reduce_range" if r.reduce_range else "")
                + ("_unfused" if parent == "unfused" and p.optimize else ""))

    out = [Candidate(dyn_name(base, fused), "dynamic", fused, base, "model_qint8.onnx")]
    for extra in p.dynamic_extra:
        if extra in ("per_channel", "per_tensor"):
            r, parent = replace(base, per_channel=extra == "per_channel"), fused
        else:  # unfused
            if not has_unfused:
                log.info("quantize.dynamic_extra 'unfused' skipped: without fusion the main candidate is it")
                continue
            r, parent = base, "unfused"
        name = dyn_name(r, parent)
        out.append(Candidate(name, "dynamic", parent, r, f"model_{name.removeprefix('onnx_')}.onnx"))
    s = p.static
    for method in s.methods:
        r = StaticRecipe(method=method, per_channel=s.per_channel, activation_type=s.activation_type,
                         symmetric_activations=s.symmetric_activations, op_types=tuple(s.op_types),
                         percentile=s.percentile, calibration_sentences=s.calibration_sentences)
        name = f"onnx_int8_static_{method}"
        out.append(Candidate(name, "static", fused, r, f"model_{name.removeprefix('onnx_')}.onnx"))
    names = [c.name for c in out]  # an extra equal to the preset's recipe adds nothing
    return [c for i, c in enumerate(out) if c.name not in names[:i]]


class Builder:
    """Builds a candidate's ONNX file from its parent, with optional node inclusion/exclusion."""

    def __init__(self, parents: dict[str, Path], calibration: Sequence[str], tokenizer, ranges_dir: Path,
                 pad_id: int = 0):
        self.parents, self.calibration, self.tokenizer = parents, list(calibration), tokenizer
        self.ranges_dir, self.pad_id = ranges_dir, pad_id

    def __call__(self, c: Candidate, dst: Path, nodes_to_quantize: Sequence[str] | None = None,
                 nodes_to_exclude: Sequence[str] | None = None) -> Path:
        src = self.parents[c.parent]
        if c.kind == "dynamic":
            return quantize_recipe(src, dst, c.recipe, nodes_to_exclude=nodes_to_exclude,
                                   nodes_to_quantize=nodes_to_quantize)
        self.ranges_dir.mkdir(parents=True, exist_ok=True)
        # ORT's histogram calibrators print progress to stdout; the stage logs one line instead.
        with contextlib.redirect_stdout(io.StringIO()):
            return quantize_static_qdq(src, dst, c.recipe, self.calibration[: c.recipe.calibration_sentences],
                                       self.tokenizer, self.ranges_dir / f"{c.name}.ranges.json",
                                       pad_id=self.pad_id, nodes_to_exclude=nodes_to_exclude,
                                       nodes_to_quantize=nodes_to_quantize)


class Scorer:
    """STS dev Spearman, embeddings and throughput of an ONNX file through the project runtime."""

    def __init__(self, bundle: Path, dev: Sequence[StsPair], threads: int, batch_size: int = 32):
        self.bundle, self.dev, self.threads, self.batch_size = bundle, list(dev), threads, batch_size

    def embedder(self, path: Path):
        from embopt.serving.runtime import Embedder

        return Embedder(self.bundle, onnx_path=path, threads=self.threads, batch_size=self.batch_size)

    def spearman(self, path: Path) -> float:
        return sts_spearman(self.embedder(path).embed, self.dev)

    def embed(self, path: Path, sentences: Sequence[str]) -> np.ndarray:
        return self.embedder(path).embed(sentences)

    def speed(self, path: Path, sentences: Sequence[str], repeats: int = 3) -> tuple[float, float]:
        """Median sentences/s and the spread of the runs (:func:`embopt.bench.timing.throughput`)."""
        return throughput(self.embedder(path).embed, sentences, repeats=repeats)


def run_fallback(c: Candidate, path: Path, build: Builder, scorer: Scorer, parent_path: Path,
                 parent_score: float, threshold: float, sample: Sequence[str], max_nodes: int,
                 workdir: Path) -> FallbackResult:
    """Per-node sensitivity of ``c``, then fp32 fallback of its most sensitive nodes until the gate passes."""
    nodes = quantized_nodes(parent_path, path, c.recipe.op_types)
    reference = scorer.embed(parent_path, sample)
    log.info("%s misses the gate: measuring the sensitivity of its %d quantized nodes on %d sentences",
             c.name, len(nodes), len(sample))
    build_c = functools.partial(build, c)
    sens = node_sensitivity(nodes, build_c, lambda p: scorer.embed(p, sample), reference, workdir)
    return exclude_until_pass(sens, build_c, lambda p: retention(scorer.spearman(p), parent_score), threshold,
                              path, max_nodes)


def pick(candidates: Sequence[Candidate], noise_floor: float) -> Candidate:
    """The fastest candidate that passed its gate, by promote's rule: speeds within the noise of the
    fastest (its spread, or ``noise_floor``) are a tie that val retention, then size, decides, so timing
    noise cannot flip the pick. If none passed, the one that kept the most accuracy."""
    passed = [c for c in candidates if c.row.get("passed")]
    if passed:
        chosen = best([Contender(c.name, c.row["retention_vs_fp32"], c.row["throughput_sps"],
                                 c.row["throughput_spread"], c.row["size_mb"], 0) for c in passed],
                      "throughput", noise_floor)
        return next(c for c in passed if c.name == chosen.name)
    return max(candidates, key=lambda c: c.row["retention_vs_fp32"])
