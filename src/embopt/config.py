"""Project paths, in one place (cookiecutter-data-science style).

Stages run with the repository root as working directory (DVC does that), but
tests and the CLI may not, so every path is anchored on the package location.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(os.environ.get("EMBOPT_ROOT", Path(__file__).resolve().parents[2])).resolve()
PARAMS_FILE = PROJ_ROOT / "params.yaml"
DATA_DIR = PROJ_ROOT / "data"
MODELS_DIR = PROJ_ROOT / "models"
METRICS_DIR = PROJ_ROOT / "metrics"
PLOTS_DIR = PROJ_ROOT / "plots"

# Stage outputs. Each stage owns exactly one folder (example-get-started-experiments).
PREPARED_DIR = DATA_DIR / "prepared"
TEACHER_EMBED_DIR = MODELS_DIR / "teacher_embed"
DISTILL_DIR = MODELS_DIR / "distill"
DISTILL_CKPT_DIR = MODELS_DIR / "distill_ckpt"
PRUNE_DIR = MODELS_DIR / "prune"
QUANTIZE_DIR = MODELS_DIR / "quantize"
EXPORT_DIR = MODELS_DIR / "export"
PCA_DIR = MODELS_DIR / "pca"


def resolve(path: str | Path) -> Path:
    """Resolve a path from params.yaml: relative paths are relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJ_ROOT / p)
