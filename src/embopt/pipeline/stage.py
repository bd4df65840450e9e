"""The wrapper every stage entry point runs in: logging set-up and exit codes.

Exit codes: 0 done, 1 bad input or params (one line names the file/key), 2 a gate missed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from embopt.errors import EmboptError, GateFailed
from embopt.pipeline.files import exit_on_sigterm

EXIT_ERROR, EXIT_GATE = 1, 2


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    # Third-party chatter (alembic migrations, HTTP retries) hides what the stage does.
    for name in ("alembic", "urllib3", "httpx", "mlflow.store.db.utils", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_stage(name: str, fn: Callable[[], None]) -> None:
    """Run a stage's ``main`` and turn known failures into one line and an exit code."""
    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # SIGTERM (dvc killed, a CI timeout) unwinds like Ctrl-C: temp outputs are removed and the
    # MLflow run ends KILLED instead of staying RUNNING forever.
    exit_on_sigterm()
    try:
        fn()
    except GateFailed as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_GATE)
    except EmboptError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def report(run, stage: str, metrics: dict, gate=None, details: dict | None = None) -> None:
    """Write ``metrics/<stage>.json`` (and ``reports/pipeline/<stage>.json``), log both, check the gate.

    ``metrics`` holds the headline numbers a reader compares across experiments (what
    ``dvc exp show`` and ``dvc metrics diff`` list); ``details`` holds the tables behind
    them (per-candidate rows, op counts), kept out of the metrics columns. Both are
    written even when the gate fails, so a miss can be inspected.
    """
    from embopt.pipeline import config
    from embopt.pipeline.files import write_json
    from embopt.pipeline.gates import enforce, evaluate_gates

    path = config.METRICS_DIR / f"{stage}.json"
    write_json(path, metrics)
    run.log_metrics(metrics)
    run.log_artifact(path)
    logger = logging.getLogger(f"stages.{stage}")
    logger.info("metrics -> %s", path)
    if details is not None:
        detail_path = config.REPORTS_DIR / "pipeline" / f"{stage}.json"
        write_json(detail_path, details)
        run.log_artifact(detail_path)
        logger.info("details -> %s", detail_path)
    if gate is not None:
        # Gates name top-level metrics; nested tables (fused op counts, per-variant rows) are reports.
        numbers = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        results = evaluate_gates(stage, gate, numbers)
        run.record_gates(results)
        enforce(results)
