"""The registered model: pyfunc round trip, loading from a fresh folder without the repo, served over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embopt.pipeline import config
from embopt.serving.pyfunc import DEFAULT_CONFIG
from embopt.serving.runtime import Embedder

MODEL = "embopt-encoder-test"
URI = f"models:/{MODEL}@champion"
TEXTS = ["A man is playing a guitar.", "The cat is watching the window.", "A dog."]


@pytest.fixture(scope="module")
def registry(tiny_bundle, tmp_path_factory):
    """A throwaway sqlite store with the tiny int8 bundle registered as @champion, as promote does."""
    import mlflow

    from embopt.export.variants import package_variant
    from embopt.pipeline.registry import log_and_register_embedder
    from embopt.pipeline.tracking import StageRun

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("pyfunc-test", artifact_location=(tmp / "artifacts").as_uri())
        bundle = package_variant(tiny_bundle, "onnx_int8", tiny_bundle / "onnx" / "model_qint8.onnx",
                                 tmp / "bundle")
        with mlflow.start_run(experiment_id=exp) as run:
            reg = log_and_register_embedder(StageRun("promote", run.info.run_id), bundle, MODEL, "champion",
                                            dim=32, example=TEXTS[:2], tags={"variant": "onnx_int8"},
                                            model_config={"threads": 1, "batch_size": 2})
    return {"uri": uri, "dir": tmp, "bundle": bundle, "version": reg["version"]}


@pytest.fixture()
def store(registry, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    mlflow.set_tracking_uri(registry["uri"])
    return registry


def expected(registry) -> np.ndarray:
    # Dynamic int8 scales activations per batch, so compare with the same batch size as the model's config.
    return Embedder(registry["bundle"], threads=1, batch_size=2).embed(TEXTS)


def test_pyfunc_round_trip(store):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(URI)
    sig = model.metadata.signature
    assert sig is not None and tuple(sig.outputs.inputs[0].shape) == (-1, 32)
    assert model.model_config["threads"] == 1 and model.model_config["batch_size"] == 2
    assert set(model.model_config) == set(DEFAULT_CONFIG)  # every key logged, so every key can be overridden
    from_df = model.predict(pd.DataFrame({"text": TEXTS}))
    from_list = model.predict(TEXTS)
    assert from_df.dtype == np.float32 and from_df.shape == (3, 32)
    np.testing.assert_allclose(from_df, expected(store), atol=1e-5)
    np.testing.assert_allclose(from_list, from_df, atol=1e-6)


def test_model_config_overrides_at_load_time(store, tmp_path):
    import mlflow

    cache = tmp_path / "served-cache.sqlite"
    model = mlflow.pyfunc.load_model(URI, model_config={"cache_path": str(cache)})
    model.predict(TEXTS)
    model.predict(TEXTS[:1])
    inner = model.unwrap_python_model().embedder
    assert inner.cache.stats()["hits"] == 1 and inner.cache.stored_rows() == 3


def test_unknown_model_config_key_is_refused():
    from embopt.serving.pyfunc import runtime_config

    with pytest.raises(ValueError, match="unknown model_config key.*thread"):
        runtime_config({"thread": 2})


def _clean_env(registry) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EMBOPT_ROOT")}
    env["MLFLOW_TRACKING_URI"] = registry["uri"]
    # `mlflow models serve` starts uvicorn by name: the environment's bin folder must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_loads_from_a_fresh_folder_without_the_repo(store, tmp_path):
    """Another folder, the repo's source hidden from the import system: the model brings its own code."""
    src = str(config.PROJ_ROOT / "src")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:] = [p for p in sys.path if p.rstrip("/") != {src!r}]
        try:
            import embopt  # noqa: F401
            raise SystemExit("embopt is importable before loading the model")
        except ImportError:
            pass
        import mlflow
        model = mlflow.pyfunc.load_model({URI!r})
        out = model.predict({TEXTS!r})
        import embopt
        print(json.dumps({{"shape": list(out.shape), "dtype": str(out.dtype), "embopt": embopt.__file__,
                          "rows": out.tolist()}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_clean_env(store),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["shape"] == [3, 32] and got["dtype"] == "float32"
    assert not got["embopt"].startswith(str(config.PROJ_ROOT))  # the model's copy of the package
    np.testing.assert_allclose(np.array(got["rows"]), expected(store), atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def _serving(registry, tmp_path: Path, workers: int, inference_config: dict) -> Iterator[tuple[str, int]]:
    """``mlflow models serve`` of the champion on a free loopback port; (base URL, server pid)."""
    port = _free_port()
    log_path = tmp_path / f"serve-{workers}.log"
    log = open(log_path, "w")
    env = _clean_env(registry)
    env["MLFLOW_PYFUNC_INFERENCE_CONFIG"] = json.dumps(inference_config)  # for this server only
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--host", "127.0.0.1",
         "--port", str(port), "--env-manager", "local", "--workers", str(workers)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}: "
                            f"{log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server not up after 180 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, proc.pid
    finally:
        _stop(proc)
        log.close()


def test_served_over_http(store, tmp_path):
    cache = tmp_path / "served.sqlite"  # a runtime setting overridden for this server only
    with _serving(store, tmp_path, 1, {"cache_path": str(cache)}) as (base, _):
        frame = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
        split = _post(f"{base}/invocations", frame)
        plain = _post(f"{base}/invocations", {"inputs": TEXTS})
    for answer in (split, plain):
        rows = np.array(answer["predictions"], dtype=np.float32)
        assert rows.shape == (3, 32)
        np.testing.assert_allclose(rows, expected(store), atol=1e-5)
    import sqlite3

    with sqlite3.connect(cache) as conn:  # the second request was served from the cache the first filled
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == len(TEXTS)


def _processes_with_file_open(pid: int, path: Path) -> set[int]:
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found = set()
    for proc in procs:
        try:
            if any(Path(f.path) == path for f in proc.open_files()):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def test_two_workers_share_one_sqlite_cache(store, tmp_path):
    """`mlflow models serve --workers 2`: both worker processes use one cache file, and answer from it.

    The in-memory LRU is switched off (``cache_max_entries: 0``) so every look-up reads the
    shared file; a row rewritten in the file behind the server's back is then what every
    request gets, whichever worker answers it.
    """
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    cache = tmp_path / "shared.sqlite"
    with _serving(store, tmp_path, 2, {"cache_path": str(cache), "cache_max_entries": 0}) as (base, pid):
        with ThreadPoolExecutor(4) as pool:  # concurrent first requests: both workers write
            firsts = list(pool.map(lambda t: _post(f"{base}/invocations", {"inputs": [t]}), TEXTS * 4))
        got = np.array([a["predictions"][0] for a in firsts[: len(TEXTS)]], dtype=np.float32)
        one_by_one = Embedder(store["bundle"], threads=1, batch_size=2)  # int8 scales per batch
        np.testing.assert_allclose(got, np.concatenate([one_by_one.embed([t]) for t in TEXTS]), atol=1e-5)
        workers = _processes_with_file_open(pid, cache)
        assert len(workers) >= 2, f"cache file open in {workers}, expected both workers"
        with sqlite3.connect(cache) as conn:
            assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == len(TEXTS)
            marker = np.zeros(32, dtype=np.float32)
            marker[0] = 1.0
            conn.execute("UPDATE embeddings SET vec = ? WHERE text = ?", (marker.tobytes(), TEXTS[0]))
        with ThreadPoolExecutor(4) as pool:
            one = {"inputs": [TEXTS[0]]}
            answers = list(pool.map(lambda _: _post(f"{base}/invocations", one), range(16)))
    for answer in answers:
        np.testing.assert_array_equal(np.array(answer["predictions"][0], dtype=np.float32), marker)


def test_repo_path_really_is_hidden(tmp_path):
    """The fresh-folder test can fail: without the model's code, embopt is not importable there."""
    src = str(Path(config.PROJ_ROOT / "src"))
    script = f"import sys; sys.path[:] = [p for p in sys.path if p.rstrip('/') != {src!r}]; import embopt"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "No module named 'embopt'" in run.stderr


@pytest.mark.services
def test_served_by_triton_with_dynamic_batching(store, tmp_path):
    """PyTriton (its own venv, see scripts/triton_serve.py) serves the champion over loopback gRPC.

    Concurrent one-sentence requests come back right, and Triton's own metrics show its
    dynamic batcher merged them (fewer model executions than inferences).
    """
    from concurrent.futures import ThreadPoolExecutor

    from scripts import triton_serve

    reason = triton_serve.missing_triton_reason()
    if reason:
        pytest.skip(reason)
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    log_path = tmp_path / "triton.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, str(Path(triton_serve.__file__)), "--model-uri", URI, "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--max-batch-size", "16",
         "--queue-delay-us", "50000", "--threads", "1", "--work", str(tmp_path / "model")],
        cwd=tmp_path, env=_clean_env(store), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"127.0.0.1:{grpc_port}"
    name = triton_serve.MODEL_NAME

    def embed_one(text: str) -> np.ndarray:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        return client.infer(name, [inp]).as_numpy("embedding")[0]

    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"triton_serve exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                if grpcclient.InferenceServerClient(url).is_model_ready(name):
                    break
            except Exception:  # not listening yet
                pass
            if time.time() > deadline:
                pytest.fail(f"triton not ready after 240 s: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        texts = TEXTS * 8
        with ThreadPoolExecutor(8) as pool:
            got = np.stack(list(pool.map(embed_one, texts)))
        # PyTriton restricts the statistics API to its own token; Triton's Prometheus metrics are open.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    finally:
        _stop(proc)
        log.close()
    one_by_one = Embedder(store["bundle"], threads=1, batch_size=2)
    want = np.concatenate([one_by_one.embed([t]) for t in texts])
    assert got.shape == (len(texts), 32) and got.dtype == np.float32
    # int8 activations are scaled per batch, so batched rows differ from one-by-one ones in float noise.
    assert np.min(np.sum(got * want, axis=1)) > 0.999
    counts = {}
    for line in metrics.splitlines():
        if line.startswith(("nv_inference_count{", "nv_inference_exec_count{")) and f'model="{name}"' in line:
            counts[line.split("{")[0]] = float(line.split()[-1])
    inferences, executions = counts["nv_inference_count"], counts["nv_inference_exec_count"]
    assert inferences == len(texts) and executions < inferences, counts
