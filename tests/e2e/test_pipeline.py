"""End to end: the real `dvc repro` on the tiny profile in a temporary copy of the repo.

Checks the contract other work relies on: every stage runs and logs one MLflow run
sharing a pipeline id, metrics/evaluate.json lists every variant, the champion
loads and embeds, a second repro does nothing, a pca-only change re-runs only
pca/evaluate/promote, and a failed gate exits non-zero without moving the alias; the
MLflow UI shows the pipeline runs, a compare view and the champion (headless Chromium).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tiny

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STAGES = ["prepare", "teacher_embed", "distill", "prune", "quantize", "export", "pca", "static", "evaluate",
          "promote"]
KEYS = {
    "dev_spearman",
    "dev_spearman_lo",
    "dev_spearman_hi",
    "retention",
    "retention_lo",
    "retention_hi",
    "val_spearman",
    "val_retention",
    "throughput_sps",
    "throughput_spread",
    "speedup_vs_teacher",
    "latency_ms_p50_bs1",
    "latency_ms_p95_bs1",
    "size_mb",
    "dim",
    "cos_to_teacher",
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    repo, env = tiny.make_pipeline_repo(root)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        return proc

    first = run("dvc", "repro")
    return {"repo": repo, "run": run, "env": env, "first": first, "uri": env["MLFLOW_TRACKING_URI"]}


def test_every_variant_in_evaluate_json(pipeline):
    repo = pipeline["repo"]
    result = json.loads((repo / "reports" / "pipeline" / "evaluate.json").read_text())
    names = set(result["variants"])
    assert {
        "teacher_torch",
        "student_torch",
        "pruned_torch",
        "onnx_fp32",
        "onnx_int8",
        "onnx_int8_pca8",
    } <= names
    for row in result["variants"].values():
        assert KEYS <= set(row)
        assert row["dev_spearman_lo"] <= row["dev_spearman"] <= row["dev_spearman_hi"]
        assert row["retention_lo"] <= row["retention"] <= row["retention_hi"]
    assert result["variants"]["onnx_int8_pca8"]["dim"] == 8
    assert result["reference"] == "teacher_torch" and result["incumbent"] is None  # first run: no champion
    assert result["variants"]["teacher_torch"]["retention"] == 1.0
    headline = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert set(headline["variants"]) == names and "final_val_retention" in headline
    for stage in STAGES:
        assert (repo / "metrics" / f"{stage}.json").exists(), stage
    assert json.loads((repo / "plots" / "evaluate_variants.json").read_text())


def test_no_val_or_dev_sentence_in_the_corpus(pipeline):
    from embopt.data.corpus import read_lines
    from embopt.data.sts import read_sts_tsv, unique_sentences

    prepared = pipeline["repo"] / "data" / "prepared"
    corpus = {s.lower() for s in read_lines(prepared / "corpus.txt")}
    for split in ("val", "dev"):
        sentences = {s.lower() for s in unique_sentences(read_sts_tsv(prepared / f"sts_{split}.tsv"))}
        assert sentences and not corpus & sentences, split


def test_one_mlflow_run_per_stage_sharing_a_pipeline_id(pipeline):
    import mlflow

    client = mlflow.MlflowClient(pipeline["uri"])
    exp = client.get_experiment_by_name("embopt-tiny")
    all_runs = client.search_runs([exp.experiment_id])
    runs = [r for r in all_runs if "dvc.stage" in r.data.tags]
    assert sorted(r.data.tags["dvc.stage"] for r in runs) == sorted(STAGES)
    assert len({r.data.tags["pipeline.id"] for r in runs}) == 1
    assert all(r.info.status == "FINISHED" for r in all_runs)
    distill = next(r for r in runs if r.data.tags["dvc.stage"] == "distill")
    assert "distill.epochs" in distill.data.params and "val_spearman" in distill.data.metrics
    assert distill.data.tags["distill.layers_kept"]
    # Their parent: the pipeline run, holding every stage's params and the headline numbers.
    (parent,) = [r for r in all_runs if r.data.tags.get("embopt.kind") == "pipeline"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert all(parent.data.tags[f"stage.{s}"] == "ran" for s in STAGES)
    assert {"distill.num_layers", "pca.k", "promote.alias"} <= set(parent.data.params)
    assert any(k.startswith("data.") for k in parent.data.params)
    assert "onnx_int8.retention" in parent.data.metrics and "onnx_int8.size_mb" in parent.data.metrics
    assert parent.data.tags["promote.decision"] == "promoted to champion"


def test_champion_loads_and_embeds_from_another_folder(pipeline, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(pipeline["uri"])
    model = mlflow.pyfunc.load_model("models:/embopt-tiny@champion")
    promoted = json.loads((pipeline["repo"] / "metrics" / "promote.json").read_text())
    out = model.predict(["A man is playing a guitar.", "The cat is eating the bread."])
    assert out.shape == (2, promoted["challenger"]["dim"]) and str(out.dtype) == "float32"
    out2 = model.predict(pd.DataFrame({"text": ["A man is playing a guitar."]}))
    assert abs(float(out2[0] @ out[0]) - 1.0) < 1e-5


def test_second_repro_does_nothing(pipeline):
    proc = pipeline["run"]("dvc", "repro")
    assert "Data and pipelines are up to date" in proc.stdout + proc.stderr
    assert "Running stage" not in proc.stdout


@contextlib.contextmanager
def _edited_params(repo: Path, *edits: tuple[str, str]):
    """The shared pipeline's params.yaml with each (old, new) line replaced, put back afterwards even
    when the test fails (later tests in this module run on the same copy)."""
    path = repo / "params.yaml"
    original = text = path.read_text()
    for old, new in edits:
        assert old in text, f"{path} has no line {old!r}"
        text = text.replace(old, new, 1)
    path.write_text(text)
    try:
        yield path
    finally:
        path.write_text(original)


def test_changing_a_student_param_reuses_the_teacher_embeddings(pipeline):
    """A distill param re-runs distill and what follows, never prepare or the teacher embedding."""
    repo, run = pipeline["repo"], pipeline["run"]
    with _edited_params(repo, ("  lr: 0.001\n", "  lr: 0.002\n")):
        changed = json.loads(run("dvc", "status", "--json").stdout or "{}")
        # `dvc status` names only stages whose own deps changed; the rest follow distill's output.
        assert changed == {"distill": [{"changed deps": {"params.yaml": {"distill": "modified"}}}]}
        dry = run("dvc", "repro", "--dry").stdout
    assert "Stage 'prepare' didn't change" in dry and "Stage 'teacher_embed' didn't change" in dry
    assert re.findall(r"Running stage '(\w+)'", dry)[0] == "distill"


def test_rerun_measures_the_incumbent_and_promotes_the_same_variant(pipeline):
    import mlflow

    repo, run = pipeline["repo"], pipeline["run"]
    first = json.loads((repo / "metrics" / "promote.json").read_text())
    assert first["decision"] == "promoted to champion" and first["incumbent"] is None
    proc = run("dvc", "repro", "-f", "-s", "evaluate", "promote")  # -s: without it -f forces every stage
    assert re.findall(r"Running stage .(\w+)", proc.stdout) == ["evaluate", "promote"]
    second = json.loads((repo / "metrics" / "promote.json").read_text())
    result = json.loads((repo / "reports" / "pipeline" / "evaluate.json").read_text())
    assert result["incumbent"] == {
        "version": first["registered_version"],
        "variant": first["challenger"]["variant"],
    }
    # Same variant chosen; identical vectors, so no reindex; the champion either stays or moves to its twin.
    assert second["challenger"]["variant"] == first["challenger"]["variant"]
    assert result["variants"]["incumbent"]["cos_to_incumbent"] == pytest.approx(1.0, abs=1e-5)
    assert second["requires_reindex"] is False
    client = mlflow.MlflowClient(pipeline["uri"])
    challenger = client.get_model_version_by_alias("embopt-tiny", "challenger")
    champion = client.get_model_version_by_alias("embopt-tiny", "champion")
    assert str(challenger.version) == second["registered_version"]
    assert str(champion.version) == second["champion_version"]
    assert challenger.tags["decision"] == second["decision"]
    assert "validation retention" in challenger.description and second["decision"] in challenger.description
    for key in (
        "variant",
        "retention_dev",
        "retention_dev_ci95",
        "pipeline.id",
        "git.commit",
        "params.sha256",
    ):
        assert challenger.tags[key], key


@pytest.mark.services
def test_mlflow_ui_shows_pipeline_runs_compare_and_champion(pipeline, tmp_path):
    """The UI a reviewer opens, in headless Chromium: the two pipeline runs so far (the first repro
    and the forced evaluate+promote), compared, and the registered model with its champion."""
    from scripts import ui_check

    chromium = ui_check.find_chromium()
    if chromium is None:
        pytest.skip(ui_check.missing_chromium_reason())
    with ui_check.mlflow_server(pipeline["uri"], tmp_path / "mlflow.log") as url:
        missing = ui_check.check(chromium, url, "embopt-tiny", "embopt-tiny", tmp_path)
    assert not missing
    assert {p.name for p in tmp_path.glob("*.png")} == {"runs.png", "compare.png", "model.png"}


def test_pca_change_reruns_only_pca_evaluate_promote_and_failed_gate_keeps_alias(pipeline):
    import mlflow

    repo, run = pipeline["repo"], pipeline["run"]
    client = mlflow.MlflowClient(pipeline["uri"])
    before = client.get_model_version_by_alias("embopt-tiny", "champion").version
    before_challenger = client.get_model_version_by_alias("embopt-tiny", "challenger").version
    with _edited_params(repo, ("  k: 8\n", "  k: 6\n")):
        # `dvc status` lists direct changes only
        assert set(json.loads(run("dvc", "status", "--json").stdout)) == {"pca"}
        # An impossible promote gate: the stages run, promote fails, the alias does not move.
        with _edited_params(repo, ("    min_speedup: null\n", "    min_speedup: 1000.0\n")):
            proc = run("dvc", "repro", check=False)
    assert proc.returncode != 0
    assert set(re.findall(r"Running stage '(\w+)'", proc.stdout)) == {"pca", "evaluate", "promote"}
    assert "gate FAILED: stage=promote metric=speedup" in proc.stderr
    assert client.get_model_version_by_alias("embopt-tiny", "champion").version == before
    assert client.get_model_version_by_alias("embopt-tiny", "challenger").version == before_challenger
    assert "onnx_int8_pca6" in json.loads((repo / "metrics" / "evaluate.json").read_text())["variants"]


def test_unknown_param_key_fails_with_one_line(pipeline):
    repo, run = pipeline["repo"], pipeline["run"]
    with _edited_params(repo, ("distill:\n", "distill:\n  epoch: 3\n")) as params:
        proc = run(sys.executable, "-m", "stages.distill", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"distill: error: {params}: unknown key 'distill.epoch'"
