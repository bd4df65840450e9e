"""The registered model: pyfunc round trip, loading from a fresh folder without the repo, served over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from ports import free_port, free_ports

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
                                            dim=32, example=TEXTS[:2],
                                            tags={"variant": "onnx_int8", "decision": "promoted to champion"},
                                            model_config={"threads": 1, "batch_size": 2},
                                            description="why it was promoted")
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


def test_version_is_created_with_its_tags_and_description(store):
    """One registry call: a promote killed after registration leaves no version without them."""
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(MODEL, store["version"])
    assert mv.tags == {"variant": "onnx_int8", "decision": "promoted to champion"}
    assert mv.description == "why it was promoted" and mv.aliases == ["champion"]
    assert mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{store['version']}/MLmodel")


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
    assert inner.cache.stats()["hits"] == 1
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 3


def test_unknown_model_config_key_is_refused():
    from embopt.serving.pyfunc import runtime_config

    with pytest.raises(ValueError, match="unknown model_config key.*thread"):
        runtime_config({"thread": 2})


@pytest.mark.parametrize("key,value", [("max_request_bytes", "8MB"), ("max_request_bytes", 0),
                                       ("cache_max_bytes", -1), ("cache_max_bytes", 1.5)])
def test_byte_bounds_in_model_config_are_checked(key, value):
    from embopt.serving.pyfunc import runtime_config

    with pytest.raises(ValueError, match=f"model_config '{key}' must be an integer"):
        runtime_config({key: value})
    assert runtime_config({key: None})[key] is None  # null: no bound


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


def _post(url: str, payload: dict | bytes) -> dict:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
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
def _serve(registry, tmp_path: Path, config: dict, workers: int = 1):
    """``mlflow models serve --workers N`` of the champion on a free loopback port; yields the base URL."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    env = _clean_env(registry)
    env["MLFLOW_PYFUNC_INFERENCE_CONFIG"] = json.dumps(config)  # runtime settings for this server only
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
                            f"{(tmp_path / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server not up after 180 s: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)
        log.close()


def test_served_over_http(store, tmp_path):
    cache = tmp_path / "served.sqlite"  # a runtime setting overridden for this server only
    with _serve(store, tmp_path, {"cache_path": str(cache)}) as base:
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


def test_repo_path_really_is_hidden(tmp_path):
    """The fresh-folder test can fail: without the model's code, embopt is not importable there."""
    src = str(Path(config.PROJ_ROOT / "src"))
    script = f"import sys; sys.path[:] = [p for p in sys.path if p.rstrip('/') != {src!r}]; import embopt"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "No module named 'embopt'" in run.stderr


# --------------------------------------------------------------------------- bad input: refused, row named

NOT_TEXT = [
    pytest.param(["A dog.", None], "row 1: null is not a string", id="null"),
    pytest.param([1, 2], "row 0: int 1 is not a string", id="numbers"),
    pytest.param(["A dog.", True], "row 1: bool True is not a string", id="bool"),
    pytest.param([["A dog.", "A cat."]], "row 0: list", id="nested-list"),
    pytest.param([{"text": "A dog."}], "row 0: dict", id="dict"),
]


@pytest.fixture(scope="module")
def loaded(registry):
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", registry["uri"])
        mlflow.set_tracking_uri(registry["uri"])
        yield mlflow.pyfunc.load_model(URI, model_config={"max_request_bytes": 4096})


@pytest.mark.parametrize("texts,message", [
    *NOT_TEXT,
    pytest.param(["A dog.", b"A cat."], "row 1: bytes b'A cat.' is not a string (decode bytes", id="bytes"),
    pytest.param(["caf\u00e9".encode("latin-1")], "row 0: bytes b'caf\\xe9' is not a string", id="latin-1"),
    pytest.param(["a dog . "] * 600, "over the limit of 4,096", id="huge-many"),
    pytest.param(["a dog . " * 600], "over the limit of 4,096", id="huge-one"),
    pytest.param(np.array([["A dog.", "A cat."]]), "got an array of shape (1, 2)", id="2d-array"),
])
def test_in_process_refuses_values_that_are_not_text(loaded, texts, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as exc:
        loaded.predict(texts)
    assert message in exc.value.message and exc.value.error_code == "INVALID_PARAMETER_VALUE"


def test_in_process_column_rule(loaded, store):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    want = expected(store)
    named = loaded.predict(pd.DataFrame({"id": [1, 2, 3], "text": TEXTS}))  # 'text' wins, ids ignored
    single = loaded.predict(pd.DataFrame({"sentence": TEXTS}))  # one column: its name does not matter
    np.testing.assert_allclose(named, want, atol=1e-5)
    np.testing.assert_allclose(single, want, atol=1e-5)
    with pytest.raises(MlflowException, match=r"one column of strings or a column named 'text', "
                                              r"got columns \['a', 'b'\]"):
        loaded.predict(pd.DataFrame({"a": TEXTS, "b": TEXTS}))  # was: column 'b' dropped silently
    with pytest.raises(MlflowException, match="row 1: null"):
        loaded.predict(pd.DataFrame({"text": ["A dog.", None]}))
    assert loaded.predict([]).shape == (0, 32)  # nothing asked, nothing answered: not an error


def _post_status(url: str, payload: dict | bytes) -> tuple[int, dict]:
    try:
        return 200, _post(url, payload)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_served_over_http_refuses_bad_input_and_survives_a_broken_cache(store, tmp_path):
    """One server: non-text values and oversized requests get 400 with the row named; a corrupted
    cache file is bypassed with one warning while every good request is answered."""
    import sqlite3

    cache = tmp_path / "broken.sqlite"
    with sqlite3.connect(cache) as conn:  # a real store, then its pages overwritten
        conn.execute("CREATE TABLE embeddings (model TEXT NOT NULL, text TEXT NOT NULL, "
                     "dim INTEGER NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (model, text))")
        conn.executemany("INSERT INTO embeddings VALUES ('m', ?, 2, ?)",
                         [(f"filler {i}", b"\0" * 1024) for i in range(40)])
    data = bytearray(cache.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    cache.write_bytes(bytes(data))

    # MLflow's parser turns a list mixing strings with numbers or booleans into strings before the model
    # sees it (module docstring of serving.pyfunc): sent as `inputs`, those lists are all non-strings here.
    bad = [
        ({"inputs": ["A dog.", None]}, "row 1: null is not a string"),
        ({"inputs": [1, 2]}, "row 0: int 1 is not a string"),
        ({"inputs": [True, False]}, "row 0: bool True is not a string"),
        ({"inputs": [["A dog.", "A cat."]]}, "nested lists"),
        ({"inputs": [{"text": "A dog."}]}, "row 0: dict"),
        ({"dataframe_records": [{"text": "A dog."}, {"text": True}]}, "row 1: bool True is not a string"),
        ({"dataframe_split": {"columns": ["text"], "data": [["A dog."], [None]]}}, "row 1: null"),
        ({"dataframe_records": [{"text": "A dog."}, {"text": 3}]}, "row 1: int 3 is not a string"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [["x", "y"]]}}, "got columns ['a', 'b']"),
        ({"inputs": ["a dog . " * 600]}, "over the limit of 4,096"),
        ({"inputs": ["a dog . "] * 600}, "over the limit of 4,096"),  # many small texts, same bound
        # Not JSON, a body in Latin-1 (not UTF-8), binary: refused by MLflow's parser, never embedded.
        (b"A dog. A cat.", "Invalid input"),
        ('{"inputs": ["caf\u00e9"]}'.encode("latin-1"), ""),
        (bytes(range(256)), ""),
    ]
    with _serve(store, tmp_path, {"cache_path": str(cache), "max_request_bytes": 4096}) as base:
        answers = [_post_status(f"{base}/invocations", payload) for payload, _ in bad]
        good = [_post_status(f"{base}/invocations", {"inputs": TEXTS}) for _ in range(2)]
        empty = _post_status(f"{base}/invocations", {"inputs": []})
        extra_column = _post_status(f"{base}/invocations", {"dataframe_split": {
            "columns": ["text", "id"], "data": [[t, i] for i, t in enumerate(TEXTS)]}})
    for (payload, message), (status, body) in zip(bad, answers, strict=True):
        assert status == 400 and message in body.get("message", ""), (payload, status, body)
        assert body.get("error_code") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), (payload, body)
        assert "Traceback" not in body.get("message", "") and "predictions" not in body
    assert empty == (200, {"predictions": []})  # nothing asked, nothing answered: not an error
    for status, body in [*good, extra_column]:
        assert status == 200, body
        rows = np.array(body["predictions"], dtype=np.float32)
        np.testing.assert_allclose(rows, expected(store), atol=1e-5)
    log = (tmp_path / "serve.log").read_text()
    warnings = [ln for ln in log.splitlines() if str(cache) in ln]
    assert len(warnings) == 1, log[-3000:]
    assert "bypassing" in warnings[0] or "in-memory cache only" in warnings[0]


@pytest.mark.parametrize("model_input", [
    ["a", "b"], ("a", "b"), np.array(["a", "b"]), np.array([["a"], ["b"]]),
    np.array(["a", "b"], dtype=object), {"text": ["a", "b"]}, {"sentence": np.array(["a", "b"])},
], ids=["list", "tuple", "array", "column-array", "object-array", "dict-text", "dict-one"])
def test_accepted_input_shapes(model_input):
    from embopt.serving.pyfunc import to_texts

    got = to_texts(model_input)
    assert got == ["a", "b"] and all(type(t) is str for t in got)
    assert to_texts(np.array("one text")) == ["one text"]  # {"inputs": "one text"} arrives as a 0-d array


def test_cache_file_that_is_not_a_database_is_bypassed_at_load(store, tmp_path, caplog):
    """`embopt embed --cache` refuses such a file (the user named it); the served model warns and serves."""
    import mlflow

    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level("WARNING", logger="embopt.serving.pyfunc"):
        model = mlflow.pyfunc.load_model(URI, model_config={"cache_path": str(bad)})
    np.testing.assert_allclose(model.predict(TEXTS), expected(store), atol=1e-5)
    assert [r.getMessage() for r in caplog.records if "not-a-db.sqlite" in r.getMessage()] == [
        f"{bad}: cannot open embedding cache (file is not a database); serving with the in-memory cache only"]
    assert model.unwrap_python_model().embedder.cache.stats()["hits"] == 0


def _processes_with_file_open(path: Path) -> set[int]:
    import psutil

    found = set()
    for proc in psutil.process_iter():
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
    with _serve(store, tmp_path, {"cache_path": str(cache), "cache_max_entries": 0}, workers=2) as base:
        with ThreadPoolExecutor(4) as pool:  # concurrent first requests: both workers write
            firsts = list(pool.map(lambda t: _post(f"{base}/invocations", {"inputs": [t]}), TEXTS * 4))
        got = np.array([a["predictions"][0] for a in firsts[: len(TEXTS)]], dtype=np.float32)
        one_by_one = Embedder(store["bundle"], threads=1, batch_size=2)  # int8 scales per batch
        np.testing.assert_allclose(got, np.concatenate([one_by_one.embed([t]) for t in TEXTS]), atol=1e-5)
        # Which worker accepts a connection is the kernel's choice; on a loaded machine one worker
        # can take a whole burst. Send more bursts until the second one has opened the file too.
        deadline = time.monotonic() + 60
        while len(workers := _processes_with_file_open(cache)) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda t: _post(f"{base}/invocations", {"inputs": [t]}), TEXTS * 4))
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
    http_port, grpc_port, metrics_port = free_ports(3)
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
        # They are refreshed on an interval (2 s by default), so read until every request is counted.
        until = time.time() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
            if _triton_counts(metrics, name).get("nv_inference_count") == len(texts) or time.time() > until:
                break
            time.sleep(1)
    finally:
        _stop(proc)
        log.close()
    one_by_one = Embedder(store["bundle"], threads=1, batch_size=2)
    want = np.concatenate([one_by_one.embed([t]) for t in texts])
    assert got.shape == (len(texts), 32) and got.dtype == np.float32
    # int8 activations are scaled per batch, so batched rows differ from one-by-one ones in float noise.
    assert np.min(np.sum(got * want, axis=1)) > 0.999
    counts = _triton_counts(metrics, name)
    inferences, executions = counts["nv_inference_count"], counts["nv_inference_exec_count"]
    assert inferences == len(texts) and executions < inferences, counts


def _triton_counts(metrics: str, model: str) -> dict[str, float]:
    """Triton's inference and execution counters for one model, from its Prometheus text."""
    counts = {}
    names = ("nv_inference_count{", "nv_inference_exec_count{")
    for line in metrics.splitlines():
        if line.startswith(names) and f'model="{model}"' in line:
            counts[line.split("{")[0]] = float(line.split()[-1])
    return counts
