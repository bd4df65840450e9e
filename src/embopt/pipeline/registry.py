"""The pipeline's one registry write: the bundle as an MLflow pyfunc model, registered and aliased.

Apart from ``tracking.py`` because only the promote stage registers models, and this module pulls
in the serving package the model ships.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embopt.errors import EmboptError
from embopt.pipeline.tracking import StageRun, _mlflow
from embopt.serving.bundle import read_manifest

log = logging.getLogger(__name__)


def log_and_register_embedder(run: StageRun, bundle_dir: Path, model_name: str, alias: str, dim: int,
                              example: list[str], tags: Mapping[str, Any],
                              model_config: Mapping[str, Any] | None = None,
                              description: str | None = None) -> dict[str, Any]:
    """Log the bundle as a pyfunc model with a signature, register it and point ``alias`` at it.

    ``model_config`` carries the runtime settings (threads, providers, cache; see
    ``embopt.serving.pyfunc.DEFAULT_CONFIG``); a consumer may override them at load time.
    The version is created with its ``tags`` and ``description`` in one registry call, so a
    run killed after registration leaves no version without them. Call only after every gate passed.
    """
    import importlib.metadata as md

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from embopt.serving.pyfunc import EmbedderModel, model_signature, runtime_config

    mlflow = _mlflow()
    pkgs = ["mlflow", "onnxruntime", "tokenizers", "numpy", "pandas"]
    if any(v.get("backend") == "openvino" for v in read_manifest(bundle_dir)["variants"].values()):
        pkgs.append("openvino")  # the served variant is an OpenVINO IR
    reqs = [f"{pkg}=={md.version(pkg)}" for pkg in pkgs]
    code_dir = Path(tempfile.mkdtemp(prefix="embopt-code-"))
    info = mlflow.pyfunc.log_model(
        name="model", python_model=EmbedderModel(), artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(_serving_package(code_dir))],
        # The model checks its own input (strings only, row named); see serving.pyfunc.model_signature.
        signature=model_signature(dim), input_example=pd.DataFrame({"text": example}), pip_requirements=reqs,
        # Every key is logged (defaults filled in): MLflow lets a consumer override only logged keys.
        model_config=runtime_config(dict(model_config or {})))
    shutil.rmtree(code_dir, ignore_errors=True)
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    mv = client.create_model_version(model_name, info.model_uri, run_id=run.run_id, description=description,
                                     tags={k: str(v) for k, v in tags.items()}, model_id=info.model_id)
    version = str(mv.version)
    client.set_registered_model_alias(model_name, alias, version)
    log.info("registered %s version %s as @%s (%s)", model_name, version, alias, info.model_uri)
    return {"model_name": model_name, "version": version, "alias": alias, "model_uri": info.model_uri,
            "run_id": run.run_id}


def _serving_package(dst: Path) -> Path:
    """A copy of ``embopt`` holding only what the served model imports: ``serving/`` and ``errors.py``."""
    package = Path(__file__).resolve().parents[1]
    out = dst / "embopt"
    shutil.copytree(package / "serving", out / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(package / "__init__.py", out / "__init__.py")
    shutil.copy2(package / "errors.py", out / "errors.py")
    return out


def set_alias(model_name: str, alias: str, version: str) -> None:
    _mlflow().MlflowClient().set_registered_model_alias(model_name, alias, version)
    log.info("models:/%s@%s -> version %s", model_name, alias, version)


def model_bundle(uri: str) -> Path:
    """The bundle folder of a logged or registered embopt model (``models:/name@alias``, ``runs:/...``),
    downloaded into MLflow's temporary folder."""
    bundle = Path(_mlflow().artifacts.download_artifacts(artifact_uri=uri)) / "artifacts" / "bundle"
    if not (bundle / "manifest.json").exists():
        raise EmboptError(f"{uri}: not an embopt model (no artifacts/bundle/manifest.json)")
    return bundle


def alias_bundle(model_name: str, alias: str, dst: Path) -> dict[str, Any] | None:
    """Download the bundle of ``models:/<name>@<alias>`` into ``dst``; None when the alias is unset.

    evaluate measures the incumbent champion this way, beside the new variants, with the
    same sentences and threads, so promote compares like with like.
    """
    from mlflow.exceptions import MlflowException

    mlflow = _mlflow()
    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{mv.version}",
                                                dst_path=str(dst))
    return {"version": str(mv.version), "variant": mv.tags.get("variant", "unknown"),
            "bundle": Path(local) / "artifacts" / "bundle"}
