"""Serve the champion through NVIDIA Triton Inference Server (PyTriton), with dynamic batching.

PyTriton ships the Triton server binary and runs the model's Python code in Triton's Python
backend; Triton's dynamic batcher merges concurrent requests into one ``Embedder.embed`` call.
It runs on CPU (no GPU needed). nvidia-pytriton 0.7.0 requires ``numpy<2`` while this project
pins numpy 2.4, so the server runs in its own environment, ``.venv-triton``
(``make triton-env``, ``requirements/triton.txt``): it needs neither MLflow nor torch, only
onnxruntime, tokenizers and numpy, and the model's own copy of ``embopt.serving``.

One command, two steps::

    .venv/bin/python scripts/triton_serve.py --model-uri models:/embopt-encoder@champion

1. in the project's environment: resolve the model URI through MLflow and download it;
2. re-run this script in ``.venv-triton`` with ``--model-dir``: bind the model and serve
   (HTTP 8000, gRPC 8001, metrics 8002 on 127.0.0.1) until SIGINT/SIGTERM.

Model ``embopt-encoder``: input ``text`` (BYTES, one UTF-8 string per row), output ``embedding``
(FP32, ``dim`` per row, unit vectors). Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRITON_VENV = REPO / ".venv-triton"
MODEL_NAME = "embopt-encoder"


def triton_python() -> Path:
    """The interpreter of the PyTriton environment (``EMBOPT_TRITON_PYTHON`` overrides)."""
    return Path(os.environ.get("EMBOPT_TRITON_PYTHON") or TRITON_VENV / "bin" / "python")


def missing_triton_reason() -> str | None:
    """None when the PyTriton environment exists, else a one-line reason."""
    if not triton_python().exists():
        return (f"PyTriton environment not found ({triton_python()}): run `make triton-env` "
                "(its own venv: nvidia-pytriton needs numpy<2)")
    return None


def download_model(model_uri: str, dst: Path) -> Path:
    """The pyfunc model folder of ``model_uri``: ``MLmodel``, ``artifacts/bundle``, ``code/embopt``."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))


def model_config(model_dir: Path) -> dict:
    """The runtime settings promote logged with the model (``model_config`` in ``MLmodel``)."""
    import yaml

    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    return dict(meta.get("flavors", {}).get("python_function", {}).get("model_config") or {})


def serve(model_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int,
          max_batch_size: int, queue_delay_us: int, threads: int | None) -> None:
    """Bind the model's Embedder to Triton with dynamic batching and serve until a signal (PyTriton env)."""
    import numpy as np

    # Triton's Python-backend stub embeds libpython: make it load this interpreter's own, not
    # a system libpython of another patch release (its stdlib would not match ours).
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        paths = [libdir, os.environ.get("LD_LIBRARY_PATH")]
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    sys.path.insert(0, str(model_dir / "code"))  # the model's own copy of embopt.serving
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from embopt.serving.runtime import Embedder

    cfg = model_config(model_dir)
    embedder = Embedder(model_dir / "artifacts" / "bundle", threads=threads or cfg.get("threads"),
                        batch_size=max_batch_size, graph_optimization=cfg.get("graph_optimization", "all"),
                        mode="latency")  # serving: each request on all threads
    dim = int(embedder.embed(["warm-up"]).shape[1])

    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        texts = [t[0].decode("utf-8") if isinstance(t[0], bytes) else str(t[0]) for t in text]
        return {"embedding": embedder.embed(texts)}

    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_port=metrics_port)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(dim,))],
            config=ModelConfig(max_batch_size=max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
            strict=True,
        )
        print(f"triton: {MODEL_NAME} (dim {dim}) on http://{host}:{http_port}, grpc {host}:{grpc_port}",
              flush=True)
        triton.serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-uri", help="MLflow model URI, e.g. models:/embopt-encoder@champion")
    src.add_argument("--model-dir", type=Path, help="an already downloaded pyfunc model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address Triton binds (default loopback)")
    parser.add_argument("--http-port", type=int, default=8000, help="Triton HTTP port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="Triton gRPC port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Triton metrics port")
    parser.add_argument("--max-batch-size", type=int, default=64, help="largest batch the batcher forms")
    parser.add_argument("--queue-delay-us", type=int, default=2000,
                        help="how long the dynamic batcher waits to fill a batch (microseconds)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: model's)")
    parser.add_argument("--work", type=Path, default=Path(".triton-model"),
                        help="where --model-uri is downloaded (default .triton-model/)")
    args = parser.parse_args(argv)
    passthrough = ["--host", args.host, "--http-port", str(args.http_port),
                   "--grpc-port", str(args.grpc_port), "--metrics-port", str(args.metrics_port),
                   "--max-batch-size", str(args.max_batch_size), "--queue-delay-us", str(args.queue_delay_us)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    if args.model_uri:
        reason = missing_triton_reason()
        if reason:
            print(f"triton-serve: {reason}", file=sys.stderr)
            return 1
        model_dir = download_model(args.model_uri, args.work.resolve())
        # The PyTriton environment imports only the model's own copy of embopt, never the repo's.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        py = str(triton_python())
        os.execve(py, [py, str(Path(__file__).resolve()), "--model-dir", str(model_dir), *passthrough], env)
    serve(args.model_dir.resolve(), args.host, args.http_port, args.grpc_port, args.metrics_port,
          args.max_batch_size, args.queue_delay_us, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
