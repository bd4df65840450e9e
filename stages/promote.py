"""Stage promote: register the best variant as the challenger; make it champion only if it wins.

"Best" is ``promote.objective`` on the validation split with the tie rule of
``embopt.pipeline.promotion``. The new best is registered with the alias
``challenger``; ``champion`` moves only when it beats the incumbent (measured by
evaluate in the same run) beyond noise. A failed gate registers nothing and moves
no alias. The registry write is the pipeline's one deliberate side effect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

from embopt.data.sts import read_sts_tsv, unique_sentences
from embopt.errors import GateFailed
from embopt.export.variants import onnx_variants, package_variant, static_variants
from embopt.pipeline import config
from embopt.pipeline.files import read_json, write_json
from embopt.pipeline.gates import evaluate_gates
from embopt.pipeline.params import Params, RuntimeParams, load_params
from embopt.pipeline.promotion import Contender, best, decide, eligible
from embopt.pipeline.registry import log_and_register_embedder, set_alias
from embopt.pipeline.stage import run_stage
from embopt.pipeline.tracking import git_commit, stage_run

log = logging.getLogger("stages.promote")


def gate_results(rows: dict, names: list[str], gate) -> dict:
    """Every candidate's gate outcomes, on validation retention and speedup."""
    return {
        n: evaluate_gates(
            "promote", gate, {"retention": rows[n]["val_retention"], "speedup": rows[n]["speedup_vs_teacher"]}
        )
        for n in names
    }


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
        "cache_max_bytes": rt.cache.max_bytes,
        "max_request_bytes": rt.max_request_bytes,
    }


def params_digest(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def summary(name: str, row: dict) -> dict:
    keys = (
        "dev_spearman",
        "retention",
        "retention_lo",
        "retention_hi",
        "val_retention",
        "throughput_sps",
        "throughput_spread",
        "speedup_vs_teacher",
        "size_mb",
        "dim",
    )
    return {"variant": name, **{k: row[k] for k in keys}}


def describe(row: dict, name: str, decision: str, reason: str, reindex: bool) -> str:
    return (
        f"{name}: dev retention {100 * row['retention']:.1f}% (95% CI {100 * row['retention_lo']:.1f}-"
        f"{100 * row['retention_hi']:.1f}%, STSb dev, never used to choose); validation retention "
        f"{100 * row['val_retention']:.1f}%; {row['speedup_vs_teacher']:.2f}x the teacher's throughput. "
        f"Decision: {decision} ({reason})."
        + (
            " REQUIRES REINDEX: its vectors are not interchangeable with the previous champion's."
            if reindex
            else ""
        )
    )


def choose(rows: dict, sources: dict, p, reference: str, run) -> Contender:
    """The best variant that passes every gate under ``p.objective``; GateFailed (no alias moves) if none."""
    gates = gate_results(rows, [n for n in sources if n in rows], p.gate)
    for name, res in gates.items():
        for r in res:
            log.info("%s: %s", name, r.line())
    passing = [Contender.from_row(n, rows[n]) for n, res in gates.items() if all(r.passed for r in res)]
    pool = eligible(passing, p.objective, rows[reference]["dim"])
    if not pool:
        run.set_tags({"gate.status": "failed"})
        misses = {n: "; ".join(r.line() for r in res if not r.passed) for n, res in gates.items()}
        raise GateFailed(
            f"no {p.objective} candidate passes every gate (aliases @{p.alias} and "
            f"@{p.challenger_alias} left where they were): "
            + " | ".join(f"{n}: {m}" for n, m in misses.items() if m)
        )
    return best(pool, p.objective, p.speed_noise_floor)


def against_incumbent(chosen: Contender, rows: dict, incumbent: dict | None, p) -> tuple[bool, str]:
    """(promote?, why): the incumbent (evaluated in this run) is replaced when it fails today's gate
    or the new best beats it beyond noise."""
    if not incumbent:
        return decide(chosen, None, p.objective, p.speed_noise_floor)
    inc_gates = gate_results(rows, ["incumbent"], p.gate)["incumbent"]
    if not all(r.passed for r in inc_gates):
        misses = "; ".join(r.line() for r in inc_gates if not r.passed)
        return True, f"the incumbent fails today's gate: {misses}"
    return decide(
        chosen, Contender.from_row(incumbent["variant"], rows["incumbent"]), p.objective, p.speed_noise_floor
    )


def main() -> None:
    params = load_params(sections=("base", "promote", "runtime"))
    p = params.promote
    with stage_run("promote", params, ["promote", "runtime"]) as run:
        result = read_json(config.REPORTS_DIR / "pipeline" / "evaluate.json")
        rows = result["variants"]
        # Every evaluated variant competes, the static model too: the gates decide, not its kind.
        sources = {n: (config.EXPORT_DIR, f) for n, f in onnx_variants().items()} | static_variants()
        chosen = choose(rows, sources, p, result["reference"], run)
        row = rows[chosen.name]
        incumbent = result.get("incumbent")
        promoted, reason = against_incumbent(chosen, rows, incumbent, p)
        cos = row.get("cos_to_incumbent")
        reindex = bool(incumbent) and (cos is None or cos < p.min_index_cosine)
        decision = "promoted to champion" if promoted else "kept incumbent"
        log.info("best %s: %s (%s)", p.objective, chosen.name, reason)
        run.set_tags({"gate.status": "passed", "promote.variant": chosen.name, "promote.decision": decision})
        tags = {
            "variant": chosen.name,
            "retention_dev": row["retention"],
            "retention_dev_ci95": f"[{row['retention_lo']}, {row['retention_hi']}]",
            "retention_val": row["val_retention"],
            "speedup_vs_teacher": row["speedup_vs_teacher"],
            "pipeline.id": run.pipeline_id,
            "git.commit": git_commit(),
            "params.sha256": params_digest(params),
            "decision": decision,
            "decision.reason": reason,
            "requires_reindex": str(reindex).lower(),
            "cos_to_incumbent": cos,
            "incumbent.version": (incumbent or {}).get("version"),
        }
        example = unique_sentences(read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv"))[:2]
        with tempfile.TemporaryDirectory() as tmp:
            src_bundle, model_file = sources[chosen.name]
            bundle = package_variant(src_bundle, chosen.name, model_file, Path(tmp) / "bundle")
            reg = log_and_register_embedder(
                run,
                bundle,
                p.model_name,
                p.challenger_alias,
                row["dim"],
                example,
                tags=tags,
                model_config=served_config(params.runtime),
                description=describe(row, chosen.name, decision, reason, reindex),
            )
        if promoted:
            set_alias(p.model_name, p.alias, reg["version"])
        run.log_to_pipeline(
            {"promote.registered_version": int(reg["version"])},
            {"promote.decision": decision, "promote.variant": chosen.name, "promote.version": reg["version"]},
        )
        if reindex:
            log.warning(
                "version %s: mean cosine to the incumbent's vectors %s < %s: tagged requires_reindex=true",
                reg["version"],
                cos,
                p.min_index_cosine,
            )
        out = {
            "decision": decision,
            "reason": reason,
            "objective": p.objective,
            "requires_reindex": reindex,
            "registered_version": reg["version"],
            "model_name": p.model_name,
            "run_id": reg["run_id"],
            "champion_version": reg["version"] if promoted else incumbent["version"],
            "challenger": summary(chosen.name, row),
            "incumbent": (
                None
                if not incumbent
                else {**summary(incumbent["variant"], rows["incumbent"]), "version": incumbent["version"]}
            ),
        }
        write_json(config.METRICS_DIR / "promote.json", out)
        log.info(
            "%s: %s v%s -> models:/%s@%s; champion is version %s",
            decision,
            chosen.name,
            reg["version"],
            p.model_name,
            p.challenger_alias,
            out["champion_version"],
        )


if __name__ == "__main__":
    run_stage("promote", main)
