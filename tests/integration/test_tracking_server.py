"""The team tracking server (``scripts/tracking_server.py``): real PostgreSQL behind ``mlflow server``.

Starts its own cluster and server on a free loopback port, runs a stage's MLflow run and the
promote stage's registry write against it over HTTP only, and checks the run, the alias and
the proxied artifacts through ``MlflowClient``. Skipped, with the reason, where the PostgreSQL
server binaries are missing (``.ci/run`` installs them where it can).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from ports import free_port

from scripts import tracking_server as ts

pytestmark = pytest.mark.services

MODEL = "embopt-encoder-server-test"
TEXTS = ["A man is playing a guitar.", "The cat is watching the window.", "A dog."]


@pytest.fixture(scope="module")
def server():
    if ts.find_pg_bindir() is None:
        pytest.skip(ts.missing_postgres_reason())
    pytest.importorskip("psycopg2", reason="psycopg2-binary (requirements/lock.txt) is not installed")
    # Not under pytest's tmp_path: that is private to its owner, and as root PostgreSQL runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="embopt-ts-"))
    root.chmod(0o755)
    port = free_port()
    try:
        url = ts.start(root / "srv", port=port, workers=1)
        yield {"url": url, "root": root / "srv", "port": port}
    finally:
        ts.stop(root / "srv")
        shutil.rmtree(root, ignore_errors=True)


def test_start_is_idempotent(server):
    pid = ts.status(server["root"], port=server["port"])["mlflow_pid"]
    assert ts.start(server["root"], port=server["port"], workers=1) == server["url"]
    after = ts.status(server["root"], port=server["port"])
    assert after["mlflow_pid"] == pid and after["healthy"] and after["postgres_running"]


def test_stage_run_and_champion_through_the_server(server, tiny_bundle, tmp_path, monkeypatch):
    """What `MLFLOW_TRACKING_URI=http://... dvc repro` does per stage, and what promote does, over HTTP."""
    import mlflow

    from embopt.export.variants import package_variant
    from embopt.pipeline import tracking
    from embopt.pipeline.params import Params
    from embopt.pipeline.registry import log_and_register_embedder

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    monkeypatch.chdir(tmp_path)  # the client's folder: nothing may be written here
    params = Params()
    bundle = package_variant(tiny_bundle, "onnx_int8", tiny_bundle / "onnx" / "model_qint8.onnx",
                             tmp_path.parent / f"{tmp_path.name}-bundle")
    with tracking.stage_run("promote", params, ["promote"]) as run:
        run.log_metrics({"retention": 0.97})
        reg = log_and_register_embedder(run, bundle, MODEL, "champion", dim=32, example=TEXTS[:2],
                                        tags={"variant": "onnx_int8"}, model_config={"threads": 1})

    client = mlflow.MlflowClient(server["url"])
    exp = client.get_experiment_by_name(params.base.experiment)
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied, not a client-side path
    r = client.get_run(reg["run_id"])
    assert r.info.status == "FINISHED" and r.data.tags["dvc.stage"] == "promote"
    assert r.data.metrics["retention"] == pytest.approx(0.97) and "base.seed" in r.data.params
    mv = client.get_model_version_by_alias(MODEL, "champion")
    assert mv.version == reg["version"] and mv.run_id == reg["run_id"] and mv.tags["variant"] == "onnx_int8"

    # The model comes back through the server's artifact proxy and embeds.
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict(TEXTS)
    assert out.shape == (3, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    assert not any(p.name in ("mlruns", "mlartifacts", "mlflow.db") for p in tmp_path.iterdir())
    stored = [p for p in (server["root"] / "artifacts").rglob("*.onnx")]
    assert stored, "the server's --artifacts-destination holds the model"


def test_stop_stops_server_and_postgres(server):
    ts.stop(server["root"])
    st = ts.status(server["root"], port=server["port"])
    assert not st["healthy"] and st["mlflow_pid"] is None and not st["postgres_running"]
    assert not os.path.exists(server["root"] / "mlflow.pid")
