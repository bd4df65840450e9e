"""`embopt embed --engine spark`: a real PySpark in local[2] mode against the local engine's vectors.

One SparkSession for the module (its JVM start is most of the cost); skipped with the reason
when pyspark or Java is missing.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import tiny

pytest.importorskip("pyspark", reason="pyspark not installed (see requirements/lock.txt)")
if not shutil.which("java"):
    pytest.skip("Spark needs Java 17+ (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

import test_pyfunc  # noqa: E402

from embopt.errors import DataError  # noqa: E402
from embopt.serving.runtime import Embedder  # noqa: E402
from embopt.serving.spark_embed import embed_files, spark_session  # noqa: E402

registry = test_pyfunc.registry  # the fixture: the tiny bundle registered as @champion in a throwaway store

pytestmark = pytest.mark.services
TEXTS = tiny.sentences(300, seed=5)


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[2]", "embopt-test")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def reference(tiny_bundle) -> np.ndarray:
    return Embedder(tiny_bundle, variant="onnx_fp32", threads=1).embed(TEXTS)


def read_output(path):
    import pyarrow.parquet as pq

    table = pq.read_table(path)  # part files in name order: the input order
    return table.to_pydict()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("fmt", ["txt", "csv", "parquet"])
def test_vectors_ids_and_order_match_the_local_engine(spark, tiny_bundle, reference, tmp_path, fmt):
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    if fmt == "txt":
        src = tmp_path / "in.txt"
        lines = [t for i, t in enumerate(TEXTS) for t in ([t, ""] if i % 50 == 0 else [t])]  # blanks skipped
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "csv":
        src = tmp_path / "in.csv"
        with open(src, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            w.writerows(zip(ids, TEXTS, strict=True))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        src = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": ids, "text": TEXTS}), src, row_group_size=64)
    out = tmp_path / "out.parquet"
    n, dim = embed_files(src, out, tiny_bundle, variant="onnx_fp32", batch_size=16, spark=spark)
    assert (n, dim) == (len(TEXTS), reference.shape[1])
    got = read_output(out)
    assert got["row"] == list(range(len(TEXTS)))
    assert got["text"] == TEXTS
    if fmt != "txt":
        assert got["id"] == ids
    vectors = np.asarray(got["embedding"], dtype=np.float32)
    assert cosines(vectors, reference).min() >= 0.9999


def test_several_partitions_keep_the_order(spark, tiny_bundle, reference, tmp_path):
    """Input split over several files (Spark partitions): rows numbered across them, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "parts.parquet"
    src.mkdir()
    for k, start in enumerate(range(0, len(TEXTS), 100)):
        pq.write_table(pa.table({"text": TEXTS[start:start + 100]}), src / f"part-{k:05d}.parquet")
    out = tmp_path / "out.parquet"
    embed_files(src, out, tiny_bundle, variant="onnx_fp32", spark=spark)
    got = read_output(out)
    assert got["row"] == list(range(len(TEXTS))) and got["text"] == TEXTS
    assert cosines(np.asarray(got["embedding"], dtype=np.float32), reference).min() >= 0.9999


def test_bad_input_is_one_line_and_nothing_written(spark, tiny_bundle, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,fine\n2,\n", encoding="utf-8")  # an empty field is null, not text
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"in.csv: row 1: null is not a string") as exc:
        embed_files(src, out, tiny_bundle, spark=spark)
    assert "\n" not in str(exc.value)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))
    with pytest.raises(DataError, match="no column 'body'"):
        embed_files(src, out, tiny_bundle, column="body", spark=spark)


def test_cli_engine_spark(spark, tiny_bundle, reference, tmp_path):
    from typer.testing import CliRunner

    from embopt.cli.main import app

    src, out = tmp_path / "in.txt", tmp_path / "cli.parquet"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    args = ["embed", str(src), str(out), "--engine", "spark", "--master", "local[2]",
            "--bundle", str(tiny_bundle), "--variant", "onnx_fp32", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    got = read_output(out)
    assert got["row"] == list(range(len(TEXTS)))
    assert cosines(np.asarray(got["embedding"], dtype=np.float32), reference).min() >= 0.9999
    res = CliRunner().invoke(app, [*args[:2], str(tmp_path / "o.npy"), *args[3:]])
    assert res.exit_code == 1 and "name it *.parquet" in res.output


def test_registered_model_uri(spark, registry, tmp_path, monkeypatch):
    """``--bundle models:/<name>@champion``: the registered bundle is downloaded once, on the driver."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    mlflow.set_tracking_uri(registry["uri"])
    src, out = tmp_path / "in.txt", tmp_path / "reg.parquet"
    src.write_text("\n".join(TEXTS[:50]) + "\n", encoding="utf-8")
    embed_files(src, out, test_pyfunc.URI, spark=spark)
    expected = Embedder(registry["bundle"], threads=1).embed(TEXTS[:50])
    got = np.asarray(read_output(out)["embedding"], dtype=np.float32)
    assert cosines(got, expected).min() >= 0.9999


def test_teacher_embed_stage_spark_engine_equals_local(spark, tiny_model_dir, dev_pairs, tmp_path,
                                                       monkeypatch, capsys):
    """``teacher_embed.engine: spark`` writes the local engine's files: same rows, order and index.

    Chunks of 128 of 300 sentences: three Spark jobs, so the chunk boundaries are crossed too.
    """
    import json

    import stage_project

    root = stage_project.make_project(tmp_path / "proj", tiny_model_dir, dev_pairs, corpus_lines=300)
    out = root / "models" / "teacher_embed"
    got = {}
    for engine in ("local", "spark"):
        stage_project.write_params(root, {"base": {"teacher": str(tiny_model_dir)}, "teacher_embed": {
            "engine": engine, "spark_master": "local[2]", "batch_size": 16, "max_seq_length": 32,
            "chunk_sentences": 128}})
        code, err = stage_project.run("teacher_embed", monkeypatch, root, capsys)
        assert code == 0, err
        metrics = json.loads((root / "metrics" / "teacher_embed.json").read_text())
        got[engine] = (np.load(out / "embeddings.npy"), json.loads((out / "index.json").read_text()), metrics)
        assert not list((root / "models" / "teacher_embed_ckpt").glob("chunk_*"))
    (local, local_index, local_metrics), (remote, remote_index, remote_metrics) = got["local"], got["spark"]
    assert remote_index == local_index and local_index["rows"] == 300
    assert remote.shape == local.shape and remote.dtype == np.float32
    assert cosines(remote, local).min() >= 0.9999
    val = "teacher_val_spearman"
    assert remote_metrics[val] == pytest.approx(local_metrics[val], abs=1e-3)
