"""Project paths, in one place (cookiecutter-data-science style).

Paths resolve from the working directory DVC gives the stage (the repository root, or an
experiment's own copy of it under ``.dvc/tmp/exps/``), never from where the package is installed:
an editable install points at the main checkout, and a queued ``dvc exp run`` must read and write
its own copy. Tests and the CLI may set ``EMBOPT_ROOT`` explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(os.environ.get("EMBOPT_ROOT") or Path.cwd()).resolve()
PARAMS_FILE = PROJ_ROOT / "params.yaml"
DATA_DIR = PROJ_ROOT / "data"
MODELS_DIR = PROJ_ROOT / "models"
METRICS_DIR = PROJ_ROOT / "metrics"
PLOTS_DIR = PROJ_ROOT / "plots"
REPORTS_DIR = PROJ_ROOT / "reports"

# Stage outputs. Each stage owns exactly one folder (example-get-started-experiments).
PREPARED_DIR = DATA_DIR / "prepared"
TEACHER_EMBED_DIR = MODELS_DIR / "teacher_embed"
TEACHER_EMBED_CKPT_DIR = MODELS_DIR / "teacher_embed_ckpt"
DISTILL_DIR = MODELS_DIR / "distill"
DISTILL_CKPT_DIR = MODELS_DIR / "distill_ckpt"
PRUNE_DIR = MODELS_DIR / "prune"
QUANTIZE_DIR = MODELS_DIR / "quantize"
EXPORT_DIR = MODELS_DIR / "export"
PCA_DIR = MODELS_DIR / "pca"
STATIC_DIR = MODELS_DIR / "static"


def workspace_root(root: Path = PROJ_ROOT) -> Path:
    """The user's checkout: ``root`` itself, or the repo whose ``.dvc/tmp/exps/`` holds this copy.

    Queued and ``--temp`` experiments run in a copy inside the workspace's ``.dvc/tmp/exps``;
    their MLflow runs belong in the workspace's store, where the user looks for them.
    """
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def resolve(path: str | Path) -> Path:
    """Resolve a path from params.yaml: relative paths are relative to the project root."""
    return PROJ_ROOT / Path(path).expanduser()  # an absolute path stays as it is
