"""Where the time of one encode goes: tokenization, building tensors, the model run, pooling.

Each backend is timed inside its real code path (no re-implementation): sentence-transformers (torch
or its ONNX backend) by wrapping its tokenizer call and ``BatchEncoding.convert_to_tensors`` and by
forward hooks on its modules; the embopt runtime by its own ``timings`` counters, the share of
pooling/normalisation in its session run (they run inside the graph) coming from an ONNX Runtime
profile (:func:`pooling_nodes`). Plus a PyTorch Profiler trace or an ORT profile per variant.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from embopt.bench.timing import accumulating
from embopt.serving.runtime import session_options

PHASES = ("tokenize", "build_tensors", "model_run", "pooling_normalize", "other")


def st_phases(model, texts: Sequence[str], batch_size: int) -> dict[str, float]:
    """Seconds per phase of one real ``model.encode(texts)`` (sentence-transformers).

    Forward hooks time the Transformer module (model run) and the Pooling/Normalize modules;
    ``model.preprocess`` (the tokenizer call) and ``BatchEncoding.convert_to_tensors`` (building its tensors)
    are wrapped.
    """
    import torch
    from transformers.tokenization_utils_base import BatchEncoding

    acc: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []
    for i, module in enumerate(model):

        def pre(_m, _inp, i=i):
            starts[i] = time.perf_counter()

        def post(_m, _inp, _out, i=i, phase="model_run" if i == 0 else "pooling_normalize"):
            acc[phase] += time.perf_counter() - starts.pop(i)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    orig_convert = BatchEncoding.convert_to_tensors
    BatchEncoding.convert_to_tensors = accumulating(orig_convert, acc, "build_tensors")
    model.preprocess = accumulating(model.preprocess, acc, "_preprocess")
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
            total = time.perf_counter() - t0
    finally:
        BatchEncoding.convert_to_tensors = orig_convert
        del model.preprocess  # back to the class method
        for h in handles:
            h.remove()
    # The tokenizer call includes building its tensors: split them apart.
    acc["tokenize"] = max(acc.pop("_preprocess", 0.0) - acc.get("build_tensors", 0.0), 0.0)
    return finish_phases(acc, total)


def finish_phases(acc: dict[str, float], total: float) -> dict[str, float]:
    """All phases present, ``other`` = the rest of the wall time, plus ``total``."""
    out = {p: float(acc.get(p, 0.0)) for p in PHASES if p != "other"}
    out["other"] = max(total - sum(out.values()), 0.0)
    out["total"] = total
    return out


def pooling_nodes(onnx_path: Path) -> set[str]:
    """Names of the nodes that pool and normalise (everything after the encoder) in an embopt graph.

    The exporter names encoder nodes ``/transformer/...`` and fused encoder ops
    (Attention, SkipLayerNorm, ...) carry no leading slash; pooling and
    normalisation nodes sit at the wrapper's top level (``/Mul``, ``/ReduceSum``,
    ``/Div``...), and a folded PCA adds ``pca_*`` nodes. Nodes after the last
    layer norm count as pooling too.
    """
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    last_ln = max((i for i, node in enumerate(nodes) if "LayerNorm" in node.op_type), default=-1)
    return {node.name for i, node in enumerate(nodes)
            if (node.name.startswith("/") and not node.name.startswith("/transformer"))
            or node.name.startswith("pca_") or (last_ln >= 0 and i > last_ln)}


def ort_profile_summary(profile_json: Path, pooling: set[str] | None = None) -> dict[str, Any]:
    """Aggregate an ONNX Runtime profile: time per op type and the pooling/normalisation share.

    ``kind`` and ``trace`` (the file's name) in the result are for the report.
    """
    events = json.loads(Path(profile_json).read_text(encoding="utf-8"))
    by_op: dict[str, float] = defaultdict(float)
    pool_us = total_us = runs_us = 0.0
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs_us += float(ev.get("dur", 0))
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        dur = float(ev.get("dur", 0))
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op] += dur
        total_us += dur
        node = ev["name"][: -len("_kernel_time")]
        if pooling and node in pooling:
            pool_us += dur
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"kind": "onnxruntime", "trace": Path(profile_json).name, "kernel_ms": total_us / 1e3,
            "model_run_ms": runs_us / 1e3,
            "pooling_share": pool_us / total_us if total_us else 0.0,
            "by_op_pct": {op: round(100.0 * us / total_us, 2) for op, us in top} if total_us else {}}


def profiling_options(threads: int, prefix: Path):
    """ORT session options for ``threads`` threads with profiling on, written at ``prefix``.

    The session's ``end_profiling()`` returns the file.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    return opts


def torch_trace(encode: Callable[[], None], trace_path: Path, table_path: Path) -> dict[str, Any]:
    """PyTorch Profiler (CPU) around ``encode()``: a Chrome trace and the top-ops table."""
    from torch.profiler import ProfilerActivity, profile

    trace_path.parent.mkdir(parents=True, exist_ok=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        encode()
    prof.export_chrome_trace(str(trace_path))
    averages = prof.key_averages()
    table_path.write_text(averages.table(sort_by="self_cpu_time_total", row_limit=25), encoding="utf-8")
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"by_op_pct": {e.key: round(100.0 * e.self_cpu_time_total / total, 2) for e in top},
            "trace": trace_path.name, "table": table_path.name}
