"""Stage pca: fit PCA on corpus embeddings of the int8 model and fold it into the ONNX graph."""

from __future__ import annotations

import logging

from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv
from embopt.eval.sts import retention, sts_spearman
from embopt.export.pca import fit_pca, fold_into_onnx, save_pca
from embopt.export.variants import PCA_INFO
from embopt.pipeline import config
from embopt.pipeline.files import atomic_dir, write_json
from embopt.pipeline.params import load_params
from embopt.pipeline.stage import report, run_stage
from embopt.pipeline.tracking import stage_run
from embopt.serving.runtime import Embedder

log = logging.getLogger("stages.pca")

PARENT = "onnx_int8"


def main() -> None:
    params = load_params(sections=("base", "pca"))
    p = params.pca
    with stage_run("pca", params, ["pca"]) as run:
        parent = Embedder(config.EXPORT_DIR, variant=PARENT, threads=params.base.threads)
        sentences = read_lines(config.PREPARED_DIR / "corpus.txt")[: p.fit_sentences]
        log.info("embedding %d corpus sentences with %s to fit PCA(k=%d)", len(sentences), PARENT, p.k)
        emb = parent.embed(sentences, show_progress=True)
        pca = fit_pca(emb, p.k, params.base.seed)
        variant = f"{PARENT}_pca{p.k}"
        val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")[: p.eval_pairs]
        with atomic_dir(config.PCA_DIR) as tmp:
            save_pca(tmp / "pca.npz", pca)
            onnx_file = fold_into_onnx(parent.onnx_path, tmp / f"model_qint8_pca{p.k}.onnx", pca)
            write_json(
                tmp / PCA_INFO, {"variant": variant, "file": onnx_file.name, "k": p.k, "parent": PARENT}
            )
            folded = Embedder(
                config.EXPORT_DIR, variant=variant, onnx_path=onnx_file, threads=params.base.threads
            )
            parent_val = sts_spearman(parent.embed, val)
            pca_val = sts_spearman(folded.embed, val)
        metrics = {
            "k": p.k,
            "dim_before": int(emb.shape[1]),
            "fit_sentences": len(sentences),
            "explained_variance": round(float(pca["explained_variance_ratio"].sum()), 5),
            "parent_val_spearman": round(parent_val, 4),
            "val_spearman": round(pca_val, 4),
            "retention_vs_parent": round(retention(pca_val, parent_val), 5),
        }
        log.info(
            "PCA %d -> %d dims (%.1f%% variance) -> %s",
            emb.shape[1],
            p.k,
            100 * metrics["explained_variance"],
            config.PCA_DIR,
        )
        report(run, "pca", metrics, gate=p.gate)


if __name__ == "__main__":
    run_stage("pca", main)
