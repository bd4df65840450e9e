"""A throw-away project folder for running one stage in-process: tiny inputs, own params and MLflow store.

Stages find every path through ``embopt.pipeline.config``; :func:`point_config_at` moves them
to the temporary project with monkeypatch, so nothing in the real repository is read
or written.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import tiny
import yaml

REPO = Path(__file__).resolve().parents[1]

PATH_ATTRS = {
    "PROJ_ROOT": "", "PARAMS_FILE": "params.yaml", "DATA_DIR": "data", "MODELS_DIR": "models",
    "METRICS_DIR": "metrics", "PLOTS_DIR": "plots", "REPORTS_DIR": "reports", "PREPARED_DIR": "data/prepared",
    "PRUNE_DIR": "models/prune", "QUANTIZE_DIR": "models/quantize", "EXPORT_DIR": "models/export",
    "PCA_DIR": "models/pca", "TEACHER_EMBED_DIR": "models/teacher_embed", "STATIC_DIR": "models/static",
    "TEACHER_EMBED_CKPT_DIR": "models/teacher_embed_ckpt",
}

PARAMS = {
    "base": {"seed": 7, "experiment": "embopt-stage-test", "threads": 1, "teacher": "tiny",
             "max_seq_length": 32},
    "quantize": {"eval_pairs": 40, "speed_sentences": 16, "static": {"calibration_sentences": 32},
                 "fallback": {"sample_sentences": 16, "max_nodes": 2},
                 "gate": {"min_retention_vs_fp32": None}},
    "export": {"tensorrt": {"min_shape": [1, 4], "opt_shape": [8, 16], "max_shape": [32, 32]},
               "triton": {"max_batch_size": 32, "preferred_batch_sizes": [4, 8]}},
}


def make_project(root: Path, model_dir: Path, dev_pairs, corpus_lines: int = 200) -> Path:
    """models/prune (the tiny model), data/prepared (STS dev + corpus) and params.yaml under ``root``."""
    from embopt.data.corpus import write_lines
    from embopt.data.sts import write_sts_tsv

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, root / "models" / "prune")
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    write_sts_tsv(prepared / "sts_val.tsv", dev_pairs)  # selection split (the tiny STS has one small split)
    write_sts_tsv(prepared / "sts_dev.tsv", dev_pairs)
    write_lines(prepared / "corpus.txt", tiny.sentences(corpus_lines, seed=11))
    write_params(root, {})
    return root


def write_params(root: Path, overrides: dict) -> None:
    """params.yaml = the repository's params.yaml, :data:`PARAMS` and ``overrides``, deep-merged.

    Every section is written: stages refuse a params.yaml without the sections they read.
    """

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    full = merge(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(merge(full, overrides)), encoding="utf-8")


def point_config_at(monkeypatch, root: Path) -> None:
    from embopt.pipeline import config

    for attr, rel in PATH_ATTRS.items():
        monkeypatch.setattr(config, attr, (root / rel) if rel else root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")


def run(stage: str, monkeypatch, root: Path, capsys) -> tuple[int, str]:
    """Run ``stages.<stage>`` as DVC would (through ``run_stage``); (exit code, stderr)."""
    from embopt.pipeline.stage import run_stage

    point_config_at(monkeypatch, root)
    module = importlib.import_module(f"stages.{stage}")
    capsys.readouterr()
    code = 0
    try:
        run_stage(stage, module.main)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err
