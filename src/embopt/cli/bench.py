"""The ``embopt bench`` command: options, defaults from params.yaml, one-line errors."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from embopt.cli.options import command, ints
from embopt.pipeline import config

if TYPE_CHECKING:
    from embopt.bench.run import BenchOptions
    from embopt.pipeline.params import Params

Opt = typer.Option


@dataclass
class BenchArgs:
    """The command line of ``embopt bench``; 0 or empty means the default named in the help."""

    quick: Annotated[bool, Opt("--quick", help="Small run (few sentences, 2 repeats, short sweeps): "
                               "checks the command works; numbers are not meaningful.")] = False
    out: Annotated[Path, Opt("--out", help="Folder for bench.md, bench.json, pareto.png and traces/.")] = (
        config.REPORTS_DIR / "bench")
    threads: Annotated[int, Opt("--threads", min=0, help="Threads for every backend (0: params.yaml "
                                "base.threads).")] = 0
    max_seq_length: Annotated[int, Opt("--max-seq-length", min=0, help="Truncation for every variant "
                                       "(0: params.yaml base.max_seq_length).")] = 0
    batch_sizes: Annotated[str, Opt("--batch-sizes", help="Comma-separated batch sizes to time.")] = (
        "1,8,32,128")
    repeats: Annotated[int, Opt("--repeats", min=0, help="Interleaved repeats per setting "
                                "(0: 3, quick: 2).")] = 0
    sentences: Annotated[int, Opt("--sentences", min=0, help="STSb dev sentences per throughput run "
                                  "(0: 512, quick: 48).")] = 0
    sts_pairs: Annotated[int, Opt("--sts-pairs", min=0, help="Limit the STSb dev pairs (0: all).")] = 0
    sts_file: Annotated[Path | None, Opt("--sts-file", help="STS dev pairs: data/prepared/sts_dev.tsv or an "
                                         "STS Benchmark csv (default: prepared if present, else "
                                         "../shared/data/stsbenchmark/sts-dev.csv).")] = None
    corpus: Annotated[Path | None, Opt("--corpus", help="Corpus for the long texts of the truncation sweep "
                                       "(default: params.yaml data.corpus_path).")] = None
    teacher: Annotated[str, Opt("--teacher", help="Teacher (package, folder or hub id; default: "
                                "params.yaml base.teacher).")] = ""
    export_dir: Annotated[Path, Opt("--export-dir", help="Bundle with our ONNX variants.")] = (
        config.EXPORT_DIR)
    pca_dir: Annotated[Path, Opt("--pca-dir", help="Folder with pca.json and the PCA-folded ONNX.")] = (
        config.PCA_DIR)
    torch_model: Annotated[list[str] | None, Opt("--torch-model", help="NAME=FOLDER of a SentenceTransformer "
                                                 "variant of ours (repeatable; default: student_torch="
                                                 "models/distill, pruned_torch=models/prune).")] = None
    final: Annotated[str, Opt("--final", help="Variant judged against the targets "
                              "(default: the one promote chose, else evaluate's).")] = ""
    trunc_lengths: Annotated[str, Opt("--trunc-lengths", help="Truncation sweep lengths (default "
                                      "32,64,128,256,512; quick: 16,32).")] = ""
    anchors: Annotated[bool, Opt("--anchors/--no-anchors", help="Build sentence-transformers' ONNX and int8 "
                                 "anchors (needs optimum).")] = True
    rss: Annotated[bool, Opt("--rss/--no-rss", help="Measure peak RSS per variant in a fresh "
                             "process.")] = True
    traces: Annotated[bool, Opt("--traces/--no-traces", help="torch.profiler / ORT profile per "
                                "variant.")] = True
    mlflow: Annotated[bool, Opt("--mlflow/--no-mlflow", help="Log the reports and traces to MLflow.")] = True

    def options(self, params: Params) -> BenchOptions:
        """The run's options: these arguments over params.yaml's defaults."""
        from embopt.bench.run import BenchOptions

        opts = BenchOptions(
            out_dir=self.out, threads=self.threads or params.base.threads,
            max_seq_length=self.max_seq_length or params.base.max_seq_length,
            batch_sizes=ints(self.batch_sizes, "--batch-sizes"), teacher=self.teacher or params.base.teacher,
            experiment=params.base.experiment, export_dir=self.export_dir, pca_dir=self.pca_dir,
            sts_file=self.sts_file, anchors=self.anchors, rss=self.rss, traces=self.traces,
            mlflow=self.mlflow, final=self.final or None, targets=params.bench.targets,
        )
        if self.quick:
            opts.quick_mode()
        opts.repeats = self.repeats or opts.repeats
        opts.speed_sentences = self.sentences or opts.speed_sentences
        opts.sts_pairs = self.sts_pairs or opts.sts_pairs
        if self.trunc_lengths:
            opts.trunc_lengths = ints(self.trunc_lengths, "--trunc-lengths")
        corpus = self.corpus or config.resolve(params.data.corpus_path)
        opts.corpus = corpus if Path(corpus).exists() else None
        named = [item.partition("=") for item in self.torch_model or []]
        for name, sep, folder in named:
            if not sep or not name or not folder:
                raise typer.BadParameter(f"--torch-model: expected NAME=FOLDER, got '{name}{sep}{folder}'")
        opts.torch_models = ({name: Path(folder) for name, _, folder in named} if named
                             else {"student_torch": config.DISTILL_DIR, "pruned_torch": config.PRUNE_DIR})
        return opts


@command(BenchArgs)
def bench(args: BenchArgs) -> None:
    """Benchmark every variant against the anchors in one run (reports/bench/, MLflow)."""
    from embopt.bench.run import run_bench
    from embopt.errors import EmboptError
    from embopt.pipeline.params import load_params
    from embopt.pipeline.stage import setup_logging

    setup_logging()
    try:
        result = run_bench(args.options(load_params()))
    except EmboptError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    logging.getLogger("embopt.bench.run").info("done in %.0f s", result["setup"]["wall_s"])
    print((Path(args.out) / "bench.md").read_text(encoding="utf-8"))
