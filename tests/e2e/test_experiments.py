"""Queued DVC experiments run their own params and code, as DVC documents them.

`dvc exp run --queue` + `dvc exp run --run-all`, with no embopt environment variables:
each experiment runs in its own copy under .dvc/tmp/exps, writes its own outputs, and
logs to the workspace's MLflow store tagged with its experiment name.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import tiny

pytestmark = pytest.mark.slow


def _distill_metrics(node, out: dict) -> None:
    """{experiment name: metrics/distill.json data} from `dvc exp show --json`, whatever the nesting."""
    if isinstance(node, dict):
        metrics = (node.get("data") or {}).get("metrics") or {}
        data = (metrics.get("metrics/distill.json") or {}).get("data")  # absent where it errored
        if node.get("name") and data:
            out[node["name"]] = data
        for v in node.values():
            _distill_metrics(v, out)
    elif isinstance(node, list):
        for v in node:
            _distill_metrics(v, out)


def test_queued_experiments_use_their_own_params_and_the_workspace_store(tmp_path):
    import mlflow

    repo, env = tiny.make_pipeline_repo(tmp_path)
    # What a user's shell has: no EMBOPT_ROOT, no PYTHONPATH, no tracking URI.
    env = {k: v for k, v in env.items() if k not in ("EMBOPT_ROOT", "PYTHONPATH", "MLFLOW_TRACKING_URI")}

    def run(*args: str) -> str:
        proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    for n in (1, 3):
        run(
            "dvc",
            "exp",
            "run",
            "--queue",
            "distill",
            "--name",
            f"layers-{n}",
            "-S",
            f"distill.num_layers={n}",
        )
    run("dvc", "exp", "run", "--run-all")
    shown: dict = {}
    _distill_metrics(json.loads(run("dvc", "exp", "show", "--json")), shown)
    assert shown["layers-1"]["num_layers"] == 1 and shown["layers-3"]["num_layers"] == 3
    assert not (repo / "metrics" / "distill.json").exists()  # the workspace was not written to
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("embopt-tiny").experiment_id])
    by_exp = {(r.data.tags.get("dvc.exp_name"), r.data.tags.get("dvc.stage", "pipeline")) for r in runs}
    assert {("layers-1", "distill"), ("layers-3", "distill")} <= by_exp
    # One parent run per experiment, named after it.
    assert {("layers-1", "pipeline"), ("layers-3", "pipeline")} <= by_exp
    assert all(r.info.status == "FINISHED" for r in runs)
    assert os.path.exists(repo / "mlartifacts")  # artifacts beside the workspace store, not in the copies
