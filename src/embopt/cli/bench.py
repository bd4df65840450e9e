"""The ``embopt bench`` command: options, defaults from params.yaml, one-line errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from embopt.pipeline import config


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option}: expected comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"{option}: expected positive integers, got '{text}'")
    return values


def bench(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Small run (few sentences, 2 repeats, short sweeps): "
        "checks the command works; numbers are not meaningful.",
    ),
    out: Path = typer.Option(
        config.PROJ_ROOT / "reports" / "bench",
        "--out",
        help="Folder for bench.md, bench.json, pareto.png and traces/.",
    ),
    threads: int = typer.Option(
        0, "--threads", min=0, help="Threads for every backend (0: params.yaml base.threads)."
    ),
    max_seq_length: int = typer.Option(
        0,
        "--max-seq-length",
        min=0,
        help="Truncation for every variant (0: params.yaml base.max_seq_length).",
    ),
    batch_sizes: str = typer.Option(
        "1,8,32,128", "--batch-sizes", help="Comma-separated batch sizes to time."
    ),
    repeats: int = typer.Option(
        0, "--repeats", min=0, help="Interleaved repeats per setting (0: 3, quick: 2)."
    ),
    sentences: int = typer.Option(
        0, "--sentences", min=0, help="STSb dev sentences per throughput run (0: 512, quick: 48)."
    ),
    sts_pairs: int = typer.Option(0, "--sts-pairs", min=0, help="Limit the STSb dev pairs (0: all)."),
    sts_file: Path = typer.Option(
        None,
        "--sts-file",
        help="STS dev pairs: data/prepared/sts_dev.tsv or an STS "
        "Benchmark csv (default: prepared if present, else "
        "../shared/data/stsbenchmark/sts-dev.csv).",
    ),
    corpus: Path = typer.Option(
        None,
        "--corpus",
        help="Corpus for the long texts of the truncation sweep (default: params.yaml data.corpus_path).",
    ),
    teacher: str = typer.Option(
        "", "--teacher", help="Teacher (package, folder or hub id; default: params.yaml base.teacher)."
    ),
    export_dir: Path = typer.Option(config.EXPORT_DIR, "--export-dir", help="Bundle with our ONNX variants."),
    pca_dir: Path = typer.Option(
        config.PCA_DIR, "--pca-dir", help="Folder with pca.json and the PCA-folded ONNX."
    ),
    torch_model: list[str] = typer.Option(
        None,
        "--torch-model",
        help="NAME=FOLDER of a SentenceTransformer variant of ours (repeatable; "
        "default: student_torch=models/distill, pruned_torch=models/prune).",
    ),
    final: str = typer.Option(
        "", "--final", help="Variant judged against the targets (default: evaluate's)."
    ),
    trunc_lengths: str = typer.Option(
        "", "--trunc-lengths", help="Truncation sweep lengths (default 32,64,128,256,512; quick: 16,32)."
    ),
    anchors: bool = typer.Option(
        True,
        "--anchors/--no-anchors",
        help="Build sentence-transformers' ONNX and int8 anchors (needs optimum).",
    ),
    rss: bool = typer.Option(True, "--rss/--no-rss", help="Measure peak RSS per variant in a fresh process."),
    traces: bool = typer.Option(
        True, "--traces/--no-traces", help="torch.profiler / ORT profile per variant."
    ),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the reports and traces to MLflow."),
) -> None:
    """Benchmark every variant against the anchors in one run (reports/bench/, MLflow)."""
    from embopt.bench.run import BenchOptions, run_bench
    from embopt.errors import EmboptError
    from embopt.pipeline.params import load_params
    from embopt.pipeline.stage import setup_logging

    setup_logging()
    try:
        params = load_params()
        opts = BenchOptions(
            out_dir=out,
            threads=threads or params.base.threads,
            max_seq_length=max_seq_length or params.base.max_seq_length,
            batch_sizes=_ints(batch_sizes, "--batch-sizes"),
            teacher=teacher or params.base.teacher,
            experiment=params.base.experiment,
            export_dir=export_dir,
            pca_dir=pca_dir,
            sts_file=sts_file,
            anchors=anchors,
            rss=rss,
            traces=traces,
            mlflow=mlflow,
            final=final or None,
        )
        if quick:
            opts.quick_mode()
        opts.repeats = repeats or opts.repeats
        opts.speed_sentences = sentences or opts.speed_sentences
        opts.sts_pairs = sts_pairs or opts.sts_pairs
        if trunc_lengths:
            opts.trunc_lengths = _ints(trunc_lengths, "--trunc-lengths")
        corpus_path = corpus or config.resolve(params.data.corpus_path)
        opts.corpus = corpus_path if Path(corpus_path).exists() else None
        if torch_model:
            pairs = {}
            for item in torch_model:
                name, sep, folder = item.partition("=")
                if not sep or not name or not folder:
                    raise typer.BadParameter(f"--torch-model: expected NAME=FOLDER, got '{item}'")
                pairs[name] = Path(folder)
            opts.torch_models = pairs
        else:
            opts.torch_models = {"student_torch": config.DISTILL_DIR, "pruned_torch": config.PRUNE_DIR}
        result = run_bench(opts)
    except EmboptError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    logging.getLogger("embopt.bench.run").info("done in %.0f s", result["setup"]["wall_s"])
    print((Path(out) / "bench.md").read_text(encoding="utf-8"))
