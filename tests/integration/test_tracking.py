import mlflow
import pytest

from embopt.errors import GateFailed
from embopt.pipeline import tracking
from embopt.pipeline.gates import enforce, evaluate_gates
from embopt.pipeline.params import Params


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_default_uri_is_sqlite_in_repo(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri().startswith("sqlite:///") and tracking.tracking_uri().endswith("/mlflow.db")


def test_pipeline_id_found_from_dvc_ancestor(monkeypatch):
    class FakeProc:
        def __init__(self, pid, argv):
            self.pid, self._argv = pid, argv

        def cmdline(self):
            return self._argv

        def create_time(self):
            return 123.0

    class FakeSelf:
        def parents(self):
            return [FakeProc(10, ["/bin/sh", "-c", "python -m stages.x"]),
                    FakeProc(9, ["/venv/bin/python", "/venv/bin/dvc", "repro"])]

    import psutil

    monkeypatch.setattr(psutil, "Process", lambda *a: FakeSelf())
    a, b = tracking.pipeline_id(), tracking.pipeline_id()
    assert a == b and len(a) == 12


def test_pipeline_id_without_dvc_is_fresh(monkeypatch):
    import psutil

    class FakeSelf:
        def parents(self):
            return []

    monkeypatch.setattr(psutil, "Process", lambda *a: FakeSelf())
    assert tracking.pipeline_id() != tracking.pipeline_id()


def test_stage_run_logs_params_tags_metrics_and_gate(store):
    params = Params()
    with pytest.raises(GateFailed), tracking.stage_run("distill", params, ["distill"]) as run:
        run.log_metrics({"retention": 0.5, "nested": {"x": 2}, "flag": True, "name": "str"})
        res = evaluate_gates("distill", params.distill.gate, {"retention": 0.5})
        run.record_gates(res)
        enforce(res)
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name(params.base.experiment)
    (r,) = client.search_runs([exp.experiment_id])
    assert r.data.tags["dvc.stage"] == "distill"
    assert r.data.tags["gate.status"] == "failed"
    assert "pipeline.id" in r.data.tags and "git.commit" in r.data.tags
    assert r.data.params["distill.num_layers"] == "2" and "base.seed" in r.data.params
    assert "prune.ffn_keep_ratio" not in r.data.params  # only the sections the stage reads
    assert r.data.metrics == {"retention": 0.5, "nested.x": 2.0}
    assert r.info.status == "FAILED"


@pytest.mark.parametrize("exc, status", [(SystemExit(143), "KILLED"), (KeyboardInterrupt(), "KILLED"),
                                         (ValueError("boom"), "FAILED")])
def test_stopped_or_broken_stage_does_not_stay_running(store, exc, status):
    params = Params()
    with pytest.raises(type(exc)), tracking.stage_run("prune", params, ["prune"]):
        raise exc
    client = mlflow.MlflowClient(store)
    (r,) = client.search_runs([client.get_experiment_by_name(params.base.experiment).experiment_id])
    assert r.info.status == status and type(exc).__name__ in r.data.tags["error"]


def test_sigterm_becomes_systemexit_in_a_stage(monkeypatch):
    import os
    import signal

    from embopt.pipeline.stage import run_stage

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as info:
            run_stage("x", lambda: os.kill(os.getpid(), signal.SIGTERM))
        assert info.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_queued_experiment_copy_logs_to_the_workspace_store(tmp_path):
    from embopt.pipeline import config

    copy = tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    assert config.workspace_root(copy) == tmp_path / "ws"
    assert config.workspace_root(tmp_path / "ws") == tmp_path / "ws"
