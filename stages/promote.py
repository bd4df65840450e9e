"""Stage promote: register the fastest variant that passes every gate and give it the alias.

The registry write is the pipeline's one deliberate side effect. If no variant
passes, it exits non-zero and the alias stays where it was.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from embopt.data.sts import read_sts_tsv, unique_sentences
from embopt.errors import GateFailed
from embopt.export.variants import onnx_variants, package_variant
from embopt.pipeline import config
from embopt.pipeline.files import read_json, write_json
from embopt.pipeline.gates import evaluate_gates
from embopt.pipeline.params import RuntimeParams, load_params
from embopt.pipeline.registry import current_alias_version, log_and_register_embedder
from embopt.pipeline.stage import run_stage
from embopt.pipeline.tracking import stage_run

log = logging.getLogger("stages.promote")


def choose(result: dict, candidates: list[str], gate) -> tuple[str | None, dict]:
    """Fastest candidate whose every gate passes; also every candidate's gate lines."""
    lines, passing = {}, []
    for name in candidates:
        row = result["variants"][name]
        res = evaluate_gates(
            "promote", gate, {"retention": row["retention"], "speedup": row["speedup_vs_teacher"]}
        )
        lines[name] = res
        if all(r.passed for r in res):
            passing.append(name)
    best = max(passing, key=lambda n: result["variants"][n]["throughput_sps"]) if passing else None
    return best, lines


def served_config(rt: RuntimeParams) -> dict:
    """The registered model's ``model_config`` (see ``serving.pyfunc.DEFAULT_CONFIG``) from params.runtime."""
    return {
        "threads": rt.threads,
        "batch_size": rt.batch_size,
        "graph_optimization": rt.graph_optimization,
        "providers": list(rt.providers),
        "cache": rt.cache.enabled,
        "cache_max_entries": rt.cache.max_entries,
        "cache_path": rt.cache.path,
        "cache_max_rows": rt.cache.max_rows,
    }


def main() -> None:
    params = load_params()
    p = params.promote
    with stage_run("promote", params, ["promote", "runtime"]) as run:
        result = read_json(config.METRICS_DIR / "evaluate.json")
        onnx = onnx_variants()
        best, lines = choose(result, [n for n in onnx if n in result["variants"]], p.gate)
        for name, res in lines.items():
            for r in res:
                log.info("%s: %s", name, r.line())
        if best is None:
            before = current_alias_version(p.model_name, p.alias)
            run.set_tags({"gate.status": "failed", "promote.alias_unchanged": str(before)})
            fastest = max(lines, key=lambda n: result["variants"][n]["throughput_sps"])
            misses = "; ".join(r.line() for r in lines[fastest] if not r.passed)
            raise GateFailed(
                f"no variant passes every gate (alias @{p.alias} left at version {before}); "
                f"fastest {fastest}: {misses}"
            )
        row = result["variants"][best]
        run.set_tags({"gate.status": "passed", "promote.variant": best})
        run.log_metrics(row)
        example = unique_sentences(read_sts_tsv(config.PREPARED_DIR / "sts_dev.tsv"))[:2]
        with tempfile.TemporaryDirectory() as tmp:
            bundle = package_variant(config.EXPORT_DIR, best, onnx[best], Path(tmp) / "bundle")
            reg = log_and_register_embedder(
                run,
                bundle,
                p.model_name,
                p.alias,
                row["dim"],
                example,
                tags={
                    "variant": best,
                    "retention": row["retention"],
                    "speedup_vs_teacher": row["speedup_vs_teacher"],
                    "sts_spearman": row["sts_spearman"],
                },
                model_config=served_config(params.runtime),
            )
        out = {
            "variant": best,
            **reg,
            **{
                k: row[k]
                for k in ("sts_spearman", "retention", "speedup_vs_teacher", "throughput_sps", "dim")
            },
        }
        write_json(config.METRICS_DIR / "promote.json", out)
        log.info("promoted %s -> models:/%s@%s", best, p.model_name, p.alias)


if __name__ == "__main__":
    run_stage("promote", main)
