from pathlib import Path

import mlflow
import pytest

from embopt.errors import EmboptError, GateFailed
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
    (r,) = _stage_runs(client, exp.experiment_id)
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
    exp_id = client.get_experiment_by_name(params.base.experiment).experiment_id
    (r,) = _stage_runs(client, exp_id)
    assert r.info.status == status and type(exc).__name__ in r.data.tags["error"]
    (parent,) = _parents(client, exp_id)
    assert parent.info.status == status and "prune: " + type(exc).__name__ in parent.data.tags["error"]
    assert parent.data.tags["stage.prune"] == {"KILLED": "killed", "FAILED": "failed"}[status]


def _stage_runs(client, exp_id):
    return client.search_runs([exp_id], "tags.`dvc.stage` != ''")


def _parents(client, exp_id):
    return client.search_runs([exp_id], "tags.`embopt.kind` = 'pipeline'")


@pytest.fixture
def repo_dvc_yaml(monkeypatch):
    """Stages read dvc.yaml from the project root: this repository's, for the real stage graph."""
    from pathlib import Path

    from embopt.pipeline import config

    monkeypatch.setattr(config, "PROJ_ROOT", Path(__file__).resolve().parents[2])


def test_upstream_stages_follow_dvc_yaml(repo_dvc_yaml):
    assert tracking.upstream_stages("prepare") == []
    assert tracking.upstream_stages("distill") == ["prepare", "teacher_embed"]
    assert tracking.upstream_stages("promote") == [
        "prepare", "teacher_embed", "distill", "prune", "quantize", "export", "pca", "static", "evaluate"]


def test_one_parent_run_per_pipeline_run(store, repo_dvc_yaml, monkeypatch):
    """Three stages of one pipeline run (DVC restored the others from its cache): one parent run
    holding the whole params.yaml, evaluate's and promote's headline numbers, and each stage's fate."""
    client = mlflow.MlflowClient(store)
    params = Params()
    # The id stages share under one dvc process (test_pipeline_id_found_from_dvc_ancestor covers that).
    monkeypatch.setattr(tracking, "pipeline_id", lambda: "0123456789ab")
    monkeypatch.setenv("DVC_EXP_NAME", "layers-3")
    for stage in ("pca", "evaluate", "promote"):
        with tracking.stage_run(stage, params, [stage]) as run:
            assert run.pipeline_id == "0123456789ab"
            (parent,) = _parents(client, client.get_run(run.run_id).info.experiment_id)
            assert parent.info.status == "RUNNING" and parent.data.tags[f"stage.{stage}"] == "running"
            if stage == "evaluate":
                run.log_to_pipeline({"onnx_int8.retention": 0.97, "onnx_int8.size_mb": 4.5})
            if stage == "promote":
                run.log_to_pipeline({"promote.registered_version": 3}, {"promote.decision": "kept incumbent"})
        assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # nothing left RUNNING

    exp_id = client.get_experiment_by_name(params.base.experiment).experiment_id
    (parent,) = _parents(client, exp_id)
    children = _stage_runs(client, exp_id)
    assert sorted(r.data.tags["dvc.stage"] for r in children) == ["evaluate", "pca", "promote"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.info.run_name == "layers-3"
    tags = parent.data.tags
    assert tags["dvc.exp_name"] == "layers-3" and tags["git.commit"] and tags["pipeline.id"] == "0123456789ab"
    assert {k: v for k, v in tags.items() if k.startswith("stage.")} == {
        **{f"stage.{s}": "skipped (cached)" for s in ("prepare", "teacher_embed", "distill", "prune",
                                                      "quantize", "export", "static")},
        "stage.pca": "ran", "stage.evaluate": "ran", "stage.promote": "ran",
    }
    assert tags["promote.decision"] == "kept incumbent"
    assert parent.data.params["pca.k"] == str(params.pca.k) and "evaluate.repeats" in parent.data.params
    assert "promote.alias" in parent.data.params and "base.seed" in parent.data.params
    # The whole params.yaml, skipped stages' sections too: two pipeline runs compare key by key.
    assert parent.data.params["distill.num_layers"] == str(params.distill.num_layers)
    evaluate = next(r for r in children if r.data.tags["dvc.stage"] == "evaluate")
    assert "pca.k" not in evaluate.data.params  # a stage's own run keeps only the sections it reads
    assert parent.data.metrics == {"onnx_int8.retention": 0.97, "onnx_int8.size_mb": 4.5,
                                   "promote.registered_version": 3.0}
    exp = client.get_experiment(exp_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_failed_stage_fails_its_pipeline_run_and_the_next_run_is_new(store, repo_dvc_yaml, monkeypatch):
    client = mlflow.MlflowClient(store)
    params = Params()
    monkeypatch.setattr(tracking, "pipeline_id", lambda: "aaaaaaaaaaaa")
    with tracking.stage_run("prepare", params, ["data"]):
        pass
    with pytest.raises(GateFailed), tracking.stage_run("teacher_embed", params, ["teacher_embed"]):
        raise GateFailed("teacher below the floor")
    # `dvc repro --keep-going` runs an independent stage after a failure: the pipeline stays FAILED.
    with tracking.stage_run("prepare", params, ["data"]):
        pass
    exp_id = client.get_experiment_by_name(params.base.experiment).experiment_id
    (parent,) = _parents(client, exp_id)
    assert parent.info.status == "FAILED" and parent.data.tags["stage.teacher_embed"] == "failed"
    assert parent.data.tags["error"] == "teacher_embed: GateFailed: teacher below the floor"

    monkeypatch.setattr(tracking, "pipeline_id", lambda: "bbbbbbbbbbbb")  # the rerun: a new dvc process
    with tracking.stage_run("teacher_embed", params, ["teacher_embed"]):
        pass
    runs = {r.data.tags["pipeline.id"]: r for r in _parents(client, exp_id)}
    assert runs["aaaaaaaaaaaa"].info.status == "FAILED" and runs["bbbbbbbbbbbb"].info.status == "FINISHED"
    assert runs["bbbbbbbbbbbb"].data.tags["stage.prepare"] == "skipped (cached)"
    assert not client.search_runs([exp_id], "attributes.status = 'RUNNING'")


@pytest.mark.parametrize("uri, shown", [
    ("http://alice:s3cret@mlflow.example.org:5000", "http://***@mlflow.example.org:5000"),
    ("https://token@host/path", "https://***@host/path"),
    ("https://host:443/a@b", "https://host:443/a@b"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_credentials_in_the_uri_are_masked(uri, shown):
    assert tracking.masked(uri) == shown


def test_stage_log_line_masks_credentials(store, caplog, monkeypatch):
    import logging

    # A server on a closed loopback port never answers: only the error line is read.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(tracking, "REACH_SECONDS", 1.0)
    with caplog.at_level(logging.INFO), pytest.raises(EmboptError) as info, \
            tracking.stage_run("prune", Params(), ["prune"]):
        pass
    assert "s3cret" not in str(info.value) and "http://***@127.0.0.1" in str(info.value)
    assert "s3cret" not in caplog.text


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracking_server_down_fails_the_stage_in_one_line(tmp_path, monkeypatch, capsys):
    """A real closed port: the stage exits 1 with one line within its budget, having written nothing."""
    import stage_project

    from embopt.pipeline.stage import run_stage

    stage_project.write_params(tmp_path, {})
    stage_project.point_config_at(monkeypatch, tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking, "REACH_SECONDS", 2.0)
    import stages.pca

    with pytest.raises(SystemExit) as info:
        run_stage("pca", stages.pca.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert err[-1].startswith(f"pca: error: tracking server {uri} unreachable after ")
    assert "Connection refused" in err[-1] and "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.services
def test_tracking_server_dying_mid_stage_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """A real `mlflow server`, stopped while the stage runs: one line and exit 1, no traceback."""
    import contextlib

    import stage_project

    from embopt.pipeline.stage import run_stage
    from scripts import ui_check

    stage_project.write_params(tmp_path, {})
    stage_project.point_config_at(monkeypatch, tmp_path)
    server = contextlib.ExitStack()
    store = f"sqlite:///{tmp_path}/server.db"
    url = server.enter_context(ui_check.mlflow_server(store, tmp_path / "server.log"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)

    def stage():
        with tracking.stage_run("pca", Params(), ["pca"]) as run:
            server.close()  # the server dies mid-stage
            run.log_metrics({"retention": 0.9})

    try:
        with pytest.raises(SystemExit) as info:
            run_stage("pca", stage)
    finally:
        server.close()
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"pca: error: tracking server {url} failed during the stage: "), last


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


def test_a_sigkilled_stage_run_is_ended_killed_by_the_next_stage(store, repo_dvc_yaml, tmp_path):
    """SIGKILL closes nothing: the next stage finds the run RUNNING with its writer gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready"
    code = (
        "import pathlib, time\n"
        "from embopt.pipeline import tracking\nfrom embopt.pipeline.params import Params\n"
        "with tracking.stage_run('prune', Params(), ['prune']):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    time.sleep(600)\n"
    )
    # The src folder of the embopt under test (not sys.path: a pyfunc test earlier in this process may
    # have put a model's partial copy of the package on it).
    env = {**os.environ, "PYTHONPATH": str(Path(tracking.__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL
        err = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    client = mlflow.MlflowClient(store)
    exp_id = client.get_experiment_by_name(Params().base.experiment).experiment_id
    (killed,) = _stage_runs(client, exp_id)
    assert killed.info.status == "RUNNING"  # what SIGKILL leaves

    with tracking.stage_run("pca", Params(), ["pca"]):
        pass
    killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and f"process {proc.pid}" in killed.data.tags["error"]
    parent = client.get_run(killed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED" and parent.data.tags["stage.prune"] == "killed"
    # A live writer's run is left alone: this process's own run ends FINISHED.
    (pca,) = [r for r in _stage_runs(client, exp_id) if r.data.tags["dvc.stage"] == "pca"]
    assert pca.info.status == "FINISHED"
