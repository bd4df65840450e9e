"""All MLflow logic lives here: store location, one run per stage, tags, artifacts.

Every stage execution is one MLflow run, tagged with the DVC stage, the git commit
and a pipeline id shared by all stages of one ``dvc repro`` (MLflow guidance:
group runs by tags rather than nesting across processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from embopt.pipeline import config
from embopt.pipeline.gates import GateResult
from embopt.pipeline.params import Params, flatten

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set (a team server), else ``sqlite:///<repo>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def default_tracking_uri() -> str:
    """The workspace's own store: a queued experiment's copy logs where the user looks."""
    return f"sqlite:///{config.workspace_root() / DEFAULT_DB}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=config.PROJ_ROOT, capture_output=True, text=True, check=True
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=config.PROJ_ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pipeline_id() -> str:
    """An id shared by every stage that one ``dvc repro`` / ``dvc exp run`` starts.

    DVC starts each stage as a child process, so the id is derived from the
    nearest ancestor ``dvc`` process (pid + start time): stable across its stages,
    different for the next invocation. A stage run by hand gets a fresh id.
    """
    try:
        import psutil

        for proc in psutil.Process().parents():
            try:
                argv = proc.cmdline()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if _is_dvc(argv):
                key = f"{proc.pid}-{proc.create_time()}"
                return hashlib.sha1(key.encode()).hexdigest()[:12]
    except ImportError:  # psutil ships with mlflow; stay usable without it
        pass
    return uuid.uuid4().hex[:12]


def _is_dvc(argv: list[str]) -> bool:
    if any(Path(a).name in ("dvc", "dvc.exe") for a in argv[:2]):
        return True
    return len(argv) >= 3 and argv[1] == "-m" and argv[2] == "dvc"


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def ensure_experiment(name: str) -> str:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so compare URIs, not the variable.
    if tracking_uri() == default_tracking_uri():
        # Keep artifacts beside the sqlite store, whatever the current directory is.
        artifact_location = (config.workspace_root() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location)


class StageRun:
    """Thin handle on the active MLflow run of one stage."""

    def __init__(self, stage: str, run_id: str):
        self.stage = stage
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        mlflow = _mlflow()
        clean = {
            f"{prefix}{k}": float(v)
            for k, v in flatten(dict(metrics)).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            return
        mlflow = _mlflow()
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _mlflow().set_tags({k: str(v) for k, v in tags.items()})

    def record_gates(self, results: list[GateResult]) -> None:
        """Put every gate outcome on the run: a tag per gate and an overall status."""
        if not results:
            self.set_tags({"gate.status": "none"})
            return
        tags = {f"gate.{r.metric}": r.line() for r in results}
        tags["gate.status"] = "passed" if all(r.passed for r in results) else "failed"
        self.set_tags(tags)
        for r in results:
            log.info(r.line())


@contextlib.contextmanager
def stage_run(stage: str, params: Params, sections: list[str]) -> Iterator[StageRun]:
    """Open the MLflow run for one stage execution and log its params.

    Args:
        stage: DVC stage name.
        params: the validated params.yaml.
        sections: the params sections this stage reads (``base`` is always logged).
    """
    exp_id = ensure_experiment(params.base.experiment)
    pid = pipeline_id()
    dumped = params.model_dump()
    logged = flatten({s: dumped[s] for s in ["base", *sections] if s in dumped})
    tags = {
        "dvc.stage": stage,
        "git.commit": git_commit(),
        "pipeline.id": pid,
        "mlflow.runName": f"{stage}-{pid}",
    }
    if os.environ.get("DVC_EXP_NAME"):  # set by dvc exp run
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    with _run(exp_id, tags, logged, stage) as handle:
        log.info("mlflow run %s (stage=%s, pipeline=%s) in %s", handle.run_id, stage, pid, tracking_uri())
        yield handle


@contextlib.contextmanager
def _run(exp_id: str, tags: Mapping[str, Any], params: Mapping[str, Any], name: str) -> Iterator[StageRun]:
    """Start a run with tags and flat params; record the error on the run if the block raises."""
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=exp_id, tags={k: str(v) for k, v in tags.items()}) as run:
        if params:
            # MLflow caps a param value at 6000 chars; ours are short. Lists become strings.
            mlflow.log_params(
                {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in params.items()}
            )
        try:
            yield StageRun(name, run.info.run_id)
        except (KeyboardInterrupt, SystemExit) as exc:
            # Ctrl-C, or SIGTERM (run_stage turns it into SystemExit): the run was stopped, not broken.
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.end_run(status="KILLED")
            raise
        except BaseException as exc:  # start_run's exit marks the run FAILED
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
            raise


@contextlib.contextmanager
def standalone_run(
    kind: str, experiment: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[StageRun]:
    """An MLflow run for work outside the DVC pipeline (``embopt bench``): same store and experiment.

    Tagged ``embopt.kind=<kind>`` and with the git commit, so it sits beside the
    stage runs without being mistaken for one (no ``dvc.stage``/``pipeline.id`` tags).
    """
    import time

    exp_id = ensure_experiment(experiment)
    all_tags = {
        "embopt.kind": kind,
        "git.commit": git_commit(),
        "mlflow.runName": f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}",
        **(tags or {}),
    }
    with _run(exp_id, all_tags, flatten(dict(params or {})), kind) as handle:
        log.info("mlflow run %s (%s) in %s", handle.run_id, kind, tracking_uri())
        yield handle
