"""Peak resident memory of one variant, in a fresh process so no variant's memory shows in another's.

``python -m embopt.bench.peak_rss SPEC.json`` imports only what that backend needs, records the peak
RSS (``VmHWM``) after the imports, loads the model, embeds the texts at the given batch size and
prints ``{"rss_imports_mb", "rss_peak_mb"}`` as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def _max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (1e6 bytes).

    ``VmHWM`` of /proc/self/status, which belongs to the current program image (Linux carries ``ru_maxrss``
    across fork+exec, so a child started by a 700 MB parent would report at least 700 MB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def measure(spec: dict[str, Any]) -> dict[str, float]:
    """Load and run the variant described by ``spec``; return the RSS figures."""
    threads = int(spec["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    texts = json.loads(Path(spec["texts_file"]).read_text(encoding="utf-8"))
    backend = spec["backend"]
    if backend == "embopt-ort":
        import onnxruntime  # noqa: F401  (counted in the import baseline)
        import tokenizers  # noqa: F401

        from embopt.serving.runtime import Embedder

        imports = _max_rss_mb()
        emb = Embedder(spec["bundle"], variant=spec["name"], onnx_path=spec["onnx_path"], threads=threads,
                       batch_size=int(spec["batch_size"]), max_seq_length=int(spec["max_seq_length"]))
        emb.embed(texts)
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        imports = _max_rss_mb()
        kwargs: dict[str, Any] = {"device": "cpu"}
        if backend == "st-onnx":
            from embopt.serving.runtime import session_options

            kwargs["backend"] = "onnx"
            kwargs["model_kwargs"] = {"file_name": spec["file_name"], "provider": "CPUExecutionProvider",
                                      "session_options": session_options(threads)}
        model = SentenceTransformer(spec["path"], **kwargs)
        model.max_seq_length = int(spec["max_seq_length"])
        with torch.inference_mode():
            model.encode(texts, batch_size=int(spec["batch_size"]), show_progress_bar=False)
    return {"rss_imports_mb": round(imports, 1), "rss_peak_mb": round(_max_rss_mb(), 1)}


def run_isolated(spec: dict[str, Any], timeout_s: float = 300.0) -> dict[str, Any]:
    """Run :func:`measure` in a child process; errors come back as ``{"error": ...}``."""
    spec_file = Path(spec["texts_file"]).with_name(f"rss_spec_{spec['name']}.json")
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "embopt.bench.peak_rss", str(spec_file)],
                              capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))), flush=True)
