"""Benchmark of the runtime itself: overhead, same ONNX file vs sentence-transformers, fidelity, cache.

Same sentences and threads, interleaved repeats, medians: the share of :meth:`Embedder.embed` outside
``InferenceSession.run`` for the int8 teacher and a 2-layer int8 student, and sentence-transformers'
ONNX backend vs our runtime on the *same* int8 file (:func:`speed_and_overhead`; :func:`fidelity` on
fp32); a Zipf stream with and without the cache (:func:`cache_bench`); the Embedder's :data:`MODES`.
Models are built once into a work folder (a student cut to ``student_layers`` of the teacher's layers:
speed does not depend on training). Nothing asserts a speed; the report says which
``bench.runtime_targets`` are met.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embopt.bench.report import md_table
from embopt.bench.run import closest_length, sts_sentences, write_json_md
from embopt.bench.simple_bundle import build_simple_bundle
from embopt.bench.timing import accumulating, interleaved, percentiles, pin_threads
from embopt.bench.variants import export_st_onnx, st_model, st_preset
from embopt.errors import EmboptError
from embopt.eval.evaluate import cpu_name
from embopt.eval.sts import cosine_rows
from embopt.pipeline.gates import GateResult
from embopt.pipeline.params import RuntimeBenchTargets
from embopt.serving.cache import EmbeddingCache
from embopt.serving.runtime import Embedder
from embopt.training.modeling import load_sentence_model, num_layers
from embopt.training.student import choose_layers, make_student

if TYPE_CHECKING:
    from embopt.cli.runtime_bench import RuntimeBenchOptions

log = logging.getLogger(__name__)
PATHS = ("st_onnx_int8", "embopt_same_file_int8", "embopt_pipeline_int8")
# Embedder keyword arguments of each way to spend the threads on bulk work; "plain" is one session
# with every thread, the path before the bulk mode (and the latency mode of serving today).
MODES: dict[str, dict[str, Any]] = {
    "plain": {"mode": "latency"},
    "sessions": {"mode": "bulk"},
    "overlap": {"mode": "latency", "tokenize_chunk": 512},
    "sessions+overlap": {"mode": "bulk", "tokenize_chunk": 512},
    "plain+budget512": {"mode": "latency", "token_budget": 512},
    "sessions+budget512": {"mode": "bulk", "token_budget": 512},
    "sessions+budget2048": {"mode": "bulk", "token_budget": 2048},
}


def prepare_models(opts: RuntimeBenchOptions) -> tuple[dict[str, dict[str, Path]], dict[str, Any]]:
    """Teacher and student, each as a SentenceTransformer folder with ST's ONNX files and our bundle.

    Returns:
        ``{"teacher": paths, "student": paths}`` and a description (layers kept, int8 preset).
    """
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    preset = st_preset()
    teacher = load_sentence_model(opts.teacher)
    if not 1 <= opts.student_layers <= num_layers(teacher):
        raise EmboptError(f"--student-layers: {opts.student_layers} must be in 1..{num_layers(teacher)}")
    keep = choose_layers(num_layers(teacher), None, opts.student_layers)
    models = {}
    for name, make in (("teacher", lambda: teacher), ("student", lambda: make_student(teacher, keep))):
        st_dir, bundle = work / f"{name}_st", work / f"{name}_bundle"
        model = make()
        if not (st_dir / "modules.json").exists():
            model.save(str(st_dir))
        files = export_st_onnx(st_dir, preset)
        if not (bundle / "manifest.json").exists():
            build_simple_bundle(model, st_dir, bundle, opts.max_seq_length)
        models[name] = {"st_dir": st_dir, "bundle": bundle, **{f"st_{k}": v for k, v in files.items()}}
    log.info("models in %s (student keeps teacher layers %s; int8 preset %s)", work, keep, preset)
    return models, {"student_layers": keep, "teacher_layers": num_layers(teacher), "int8_preset": preset}


def make_embedder(bundle: Path, opts: RuntimeBenchOptions, **kwargs):
    return Embedder(bundle, threads=opts.threads, batch_size=opts.batch_size,
                    max_seq_length=opts.max_seq_length, **kwargs)


def st_onnx_encoder(m: dict[str, Path], onnx_file: Path, opts: RuntimeBenchOptions):
    """sentence-transformers' ONNX backend on ``onnx_file``; returns (encode, timer of its session runs)."""
    model = st_model(m["st_dir"], opts.threads, opts.max_seq_length, str(onnx_file.relative_to(m["st_dir"])))

    def encode(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), batch_size=opts.batch_size, convert_to_numpy=True,
                            show_progress_bar=False, normalize_embeddings=False)

    session, timer = model[0].auto_model.session, {"run_s": 0.0}  # the ORT session inside optimum's model
    session.run = accumulating(session.run, timer, "run_s")
    return encode, timer


@dataclass
class Contender:
    """One encode path; records, per call, the seconds inside ``InferenceSession.run`` and tokenizing.

    Our ``embedder`` counts them itself; sentence-transformers' run is timed into ``st_timer``.
    """

    name: str
    encode: Callable[[Sequence[str]], np.ndarray]
    embedder: Any = None  # our Embedder (for its timings)
    st_timer: dict[str, float] | None = None
    run_s: list[float] = field(default_factory=list)
    tokenize_s: list[float] = field(default_factory=list)

    def __call__(self, texts: Sequence[str]) -> None:
        if self.embedder is not None:
            self.embedder.reset_timings()
        else:
            self.st_timer["run_s"] = 0.0
        self.encode(texts)
        if self.embedder is not None:
            self.run_s.append(self.embedder.timings.run_s)
            self.tokenize_s.append(self.embedder.timings.tokenize_s)
        else:
            self.run_s.append(self.st_timer["run_s"])

    def row(self, seconds: np.ndarray, n: int) -> dict[str, Any]:
        """``seconds[round, chunk]`` of this contender, ``n`` texts a round: medians over rounds."""
        per_round = [float(x) for x in seconds.sum(axis=1)]
        med = statistics.median(per_round)
        run = np.asarray(self.run_s).reshape(seconds.shape).sum(axis=1)
        ours = self.embedder is not None
        measured = ours or run.sum() > 0  # 0: sentence-transformers did not call the session's run
        tokenize = np.asarray(self.tokenize_s).reshape(seconds.shape).sum(axis=1) if ours else None
        return {"sentences_per_s": round(n / med, 1), "seconds_median": round(med, 4), "runs": len(per_round),
                "seconds_per_round": [round(x, 4) for x in per_round],
                "overhead_fraction": round(float(np.median(1 - run / per_round)), 4) if measured else None,
                "tokenize_fraction": round(float(np.median(tokenize / per_round)), 4) if ours else None}


def timed_rows(contenders: list[Contender], texts: Sequence[str], repeats: int, chunk: int = 512) -> dict:
    """Warm every contender, then time ``repeats`` rounds over ``texts`` in chunks, interleaved chunk by
    chunk (:func:`embopt.bench.timing.interleaved`). Each contender sorts by length within its own call."""
    for c in contenders:
        c.encode(list(texts[:64]))
    chunks = [list(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    seconds = interleaved({c.name: c for c in contenders}, chunks, repeats)
    return {c.name: c.row(seconds[c.name], len(texts)) for c in contenders}


def speed_and_overhead(models: dict, texts: list[str], opts: RuntimeBenchOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("teacher", "student"):
        m = models[name]
        st_enc, st_timer = st_onnx_encoder(m, m["st_int8"], opts)
        same = make_embedder(m["bundle"], opts, onnx_path=m["st_int8"])
        ours = make_embedder(m["bundle"], opts)
        contenders = [Contender(PATHS[0], st_enc, st_timer=st_timer),
                      Contender(PATHS[1], same.embed, embedder=same),
                      Contender(PATHS[2], ours.embed, embedder=ours)]
        log.info("%s: timing %d sentences x %d rounds (%s)", name, len(texts), opts.repeats, ", ".join(PATHS))
        rows = timed_rows(contenders, texts, opts.repeats)
        st = rows["st_onnx_int8"]["sentences_per_s"]
        rows["speedup_same_file"] = round(rows["embopt_same_file_int8"]["sentences_per_s"] / st, 3)
        rows["speedup_pipeline_vs_st"] = round(rows["embopt_pipeline_int8"]["sentences_per_s"] / st, 3)
        out[name] = rows
    return out


def fidelity(models: dict, texts: list[str], opts: RuntimeBenchOptions) -> dict[str, Any]:
    """Cosine of our runtime vs sentence-transformers on the same fp32 ONNX file, every sentence."""
    m = models["teacher"]
    ref = st_onnx_encoder(m, m["st_fp32"], opts)[0](texts)
    same = cosine_rows(make_embedder(m["bundle"], opts, onnx_path=m["st_fp32"]).embed(texts), ref)
    pipe = cosine_rows(make_embedder(m["bundle"], opts, variant="onnx_fp32").embed(texts), ref)
    return {"sentences": len(texts), "same_file_cosine_min": float(same.min()),
            "same_file_cosine_mean": float(same.mean()), "same_file_below_0.9999": int((same < 0.9999).sum()),
            "pipeline_fp32_cosine_min": float(pipe.min()), "pipeline_fp32_cosine_mean": float(pipe.mean())}


def zipf_stream(texts: list[str], n: int, s: float, seed: int = 0) -> list[str]:
    """``n`` queries drawn from ``texts`` with Zipf(s) popularity; which text gets which rank is shuffled."""
    rng = np.random.default_rng(seed)
    ranked = [texts[i] for i in rng.permutation(len(texts))]
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** s
    picks = rng.choice(len(ranked), size=n, p=weights / weights.sum())
    return [ranked[i] for i in picks]


def cache_bench(models: dict, texts: list[str], opts: RuntimeBenchOptions) -> dict[str, Any]:
    bundle = models["teacher"]["bundle"]
    stream = zipf_stream(texts, opts.zipf_queries, opts.zipf_s)
    distinct = len(set(stream))
    # One Embedder (one ORT session) serves both sides, the cache switched on and off per request:
    # two sessions would each keep their own spinning thread pool and slow each other down.
    emb = make_embedder(bundle, opts)
    emb.embed(texts[:64])
    rounds = max(1, min(opts.repeats, 3))
    main, cache = _stream_timing(emb, stream, opts.batch_size, rounds)
    stats = cache.stats()
    single = _stream_timing(emb, stream, 1, rounds)[0]
    emb.attach_cache(cache)
    # Cost of a hit: requests made only of cached texts, through Embedder.embed (the served path).
    warm = list(dict.fromkeys(stream))
    hit_requests = [warm[i : i + opts.batch_size] for i in range(0, len(warm), opts.batch_size)]
    mem_us = _per_hit_us(emb, hit_requests, opts.hit_probes)
    store = Path(opts.work_dir) / "bench_cache.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    disk = make_embedder(bundle, opts, cache=EmbeddingCache(max_entries=0, path=store))
    disk.embed(warm)
    disk_us = _per_hit_us(disk, hit_requests, max(1, opts.hit_probes // 4))
    disk.cache.close()
    n = len(stream)
    return {"queries": n, "distinct": distinct, "repeat_fraction": round(1 - distinct / n, 4),
            "ideal_speedup": round(n / distinct, 3), "zipf_s": opts.zipf_s, **main,
            "hit_rate": round(stats["hit_rate"], 4), "hit_us_memory": round(mem_us, 2),
            "hit_us_sqlite": round(disk_us, 2), "single_queries": single}


def _stream_timing(emb, stream: list[str], request_size: int, rounds: int) -> tuple[dict[str, Any], Any]:
    """The stream in requests of ``request_size``, each served without and with the cache.

    The two serve the same request back to back (order alternating: :func:`interleaved`), so a change
    of load on this shared machine hits both alike; the cache starts empty every round. Returns the
    timings and the last round's cache.
    """
    requests = [stream[i : i + request_size] for i in range(0, len(stream), request_size)]
    no_cache, with_cache = [], []
    for _ in range(rounds):
        cache = EmbeddingCache(max_entries=100_000)
        emb.attach_cache(cache)

        def serve(req: list[str], use: EmbeddingCache | None = cache) -> None:
            emb.cache = use
            emb.embed(req)

        secs = interleaved({"without": lambda req: serve(req, None), "with": serve}, requests, 1)
        no_cache.append(float(secs["without"].sum()))
        with_cache.append(float(secs["with"].sum()))
    emb.cache = None
    t_without, t_with = statistics.median(no_cache), statistics.median(with_cache)
    timings = {"request_size": request_size, "seconds_without": round(t_without, 4),
               "seconds_with": round(t_with, 4), "rounds_without": [round(x, 4) for x in no_cache],
               "rounds_with": [round(x, 4) for x in with_cache], "speedup": round(t_without / t_with, 3)}
    return timings, cache


def _per_hit_us(embedder, requests: list[list[str]], rounds: int) -> float:
    def hits(reqs: list[list[str]]) -> None:
        for req in reqs:
            embedder.embed(req)

    runs = interleaved({"hits": hits}, [requests], max(1, rounds))
    return statistics.median(runs["hits"][:, 0]) / sum(map(len, requests)) * 1e6


def mode_bench(bundle: Path, texts: list[str], opts: RuntimeBenchOptions, variant: str | None = None,
               call_size: int = 4096) -> dict[str, Any]:
    """Throughput of every :data:`MODES` entry in calls of ``call_size`` texts (``embopt embed``'s), ratio
    and min cosine to ``plain``; batch-1 p50 of 16-token queries on 1 thread, embed vs session.run."""
    embedders = {name: make_embedder(bundle, opts, variant=variant, **kw) for name, kw in MODES.items()}
    contenders = [Contender(name, e.embed, embedder=e) for name, e in embedders.items()]
    log.info("modes: %d sentences x %d rounds (%s)", len(texts), opts.repeats, ", ".join(MODES))
    rows = timed_rows(contenders, texts, opts.repeats, chunk=call_size)
    ref = embedders["plain"].embed(texts)
    for name, e in embedders.items():
        rows[name]["vs_plain"] = round(rows[name]["sentences_per_s"] / rows["plain"]["sentences_per_s"], 3)
        rows[name]["cosine_min_vs_plain"] = round(float(cosine_rows(e.embed(texts), ref).min()), 6)
    one = make_embedder(bundle, replace(opts, threads=1), variant=variant, mode="latency")
    queries, tokens = closest_length(texts, [len(ids) for ids in one.tokenize(texts)], 100)
    ids = np.array([one.tokenize(queries[:1])[0]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    calls = {"embed": lambda q: one.embed([q]),
             "session_run": lambda q: one.session.run([one.output_name], feeds)}  # the floor
    for q in queries[:10]:
        for call in calls.values():
            call(q)
    secs = interleaved(calls, queries, max(opts.repeats, 5))
    latency = {k: {m: round(v, 4) for m, v in percentiles(1e3 * s.ravel(), suffix="_ms").items()}
               for k, s in secs.items()}
    return {"bundle": str(bundle), "variant": one.variant, "call_size": call_size, "throughput": rows,
            "latency_16tok_1thread": {"queries": len(queries), "tokens": tokens, **latency}}


def modes_markdown(m: dict[str, Any], setup: dict[str, Any]) -> str:
    head = ["mode", "Embedder arguments", "sentences/s", "vs plain", "tokenize", "min cosine vs plain"]
    rows = [[name, ", ".join(f"{k}={v}" for k, v in MODES[name].items()), f"{r['sentences_per_s']:.0f}",
             f"{r['vs_plain']:.2f}x", f"{100 * r['tokenize_fraction']:.1f}%",
             f"{r['cosine_min_vs_plain']:.6f}"] for name, r in m["throughput"].items()]
    lat = m["latency_16tok_1thread"]
    return "\n".join([
        f"# Runtime modes ({setup['date']}, {setup['cpu']}, {setup['threads']} threads in every mode, "
        f"`{m['variant']}` of `{m['bundle']}`, {setup['sentences']} STSb sentences in calls of "
        f"{m['call_size']}, {setup['repeats']} interleaved rounds; load average {setup['load_average']})",
        "",
        md_table(head, rows),
        f"Batch 1, {lat['tokens']}-token queries ({lat['queries']}), 1 thread, latency mode: "
        f"`embed` p50 {lat['embed']['p50_ms']:.3f} ms (p95 {lat['embed']['p95_ms']:.3f}); the bare "
        f"`InferenceSession.run` p50 {lat['session_run']['p50_ms']:.3f} ms.",
        "",
        "Dynamic int8 quantizes activations with one scale per batch: a mode that forms other "
        "batches (chunks, token budget) moves int8 vectors slightly; on fp32 all modes agree.",
    ]) + "\n"


def run_mode_bench(opts: RuntimeBenchOptions) -> dict[str, Any]:
    """:func:`mode_bench` alone on ``opts.bundle``, written to ``runtime_modes.json`` and ``.md``."""
    texts = sts_sentences(opts.sts_file, opts.sentences)
    pin_threads(opts.threads, exclusive=True)
    load_start = os.getloadavg()[0]
    m = mode_bench(opts.bundle, texts, opts, opts.variant or None)
    setup = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_name(), "threads": opts.threads,
             "sentences": len(texts), "repeats": opts.repeats,
             "load_average": f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end on "
                             f"{os.cpu_count()} CPUs"}
    result = {"setup": setup, "modes": m}
    write_json_md(Path(opts.out_dir) / "runtime_modes", result, modes_markdown(m, setup))
    return result


def check_targets(result: dict[str, Any], t: RuntimeBenchTargets | None = None) -> dict[str, dict[str, Any]]:
    """Each target with its value and whether it is met (``bench.runtime_targets``)."""
    t = t or RuntimeBenchTargets()
    sp, fid, cache = result["speed"], result["fidelity"], result["cache"]
    overhead = {"teacher": t.max_overhead_teacher_int8, "student": t.max_overhead_student_int8}
    checks = {
        f"overhead_{model}_int8{suffix}": (sp[model][path]["overhead_fraction"], "<=", limit)
        for model, limit in overhead.items()
        for suffix, path in (("", PATHS[1]), ("_pipeline", PATHS[2]))
    } | {
        f"same_file_speedup_{model}": (sp[model]["speedup_same_file"], ">=", t.min_same_file_speedup)
        for model in overhead
    } | {
        "cache_speedup": (cache["speedup"], ">=", t.min_cache_speedup),
        "cache_speedup_single_queries": (cache["single_queries"]["speedup"], ">=", t.min_cache_speedup),
        "cache_hit_us": (cache["hit_us_memory"], "<=", t.max_cache_hit_us),
        "fidelity_cosine_min": (fid["same_file_cosine_min"], ">=", t.min_fidelity_cosine),
    }
    # Every value is measured on every run; the comparison is the pipeline gates'.
    return {key: {"value": value, "target": f"{op} {target}",
                  "met": GateResult("bench-runtime", key, float(value), op, float(target)).passed}
            for key, (value, op, target) in checks.items()}


def markdown(result: dict[str, Any]) -> str:
    s, f, c = result["setup"], result["fidelity"], result["cache"]
    speed = []
    for name in ("teacher", "student"):
        rows = result["speed"][name]
        for path in PATHS:
            r = rows[path]
            ov = f"{100 * r['overhead_fraction']:.1f}%" if r["overhead_fraction"] is not None else "n/a"
            tk = f"{100 * r['tokenize_fraction']:.1f}%" if r["tokenize_fraction"] is not None else "-"
            vs = r["sentences_per_s"] / rows["st_onnx_int8"]["sentences_per_s"]
            speed.append([name, path, f"{r['sentences_per_s']:.0f}", ov, tk, f"{vs:.2f}x"])
    targets = [[key, str(round(t["value"], 4)), t["target"],
                "yes" if t["met"] else "NO"] for key, t in result["targets"].items()]
    single = c["single_queries"]
    modes_setup = {k: s[k] for k in ("date", "threads", "sentences", "repeats")} | {
        "cpu": s["machine"], "load_average": s.get("load_average_start")}
    return "\n".join([
        f"# Runtime benchmark ({s['date']}, {s['machine']}, {s['threads']} threads, batch {s['batch_size']}, "
        f"{s['sentences']} STSb dev sentences, max_seq_length {s['max_seq_length']})",
        "",
        f"Load average (1/5/15 min) at start {s.get('load_average_start')}, "
        f"at end {s.get('load_average_end')} "
        f"on {os.cpu_count()} CPUs: above the CPU count, other processes shared the cores and absolute "
        "speeds are low; contenders are interleaved chunk by chunk, so ratios stay comparable.",
        "",
        md_table(["model", "path", "sentences/s", "overhead", "tokenize", "vs ST same file"], speed),
        f"Fidelity (same fp32 ONNX file, {f['sentences']} sentences): min cosine "
        f"{f['same_file_cosine_min']:.6f}, mean {f['same_file_cosine_mean']:.7f}; "
        f"pipeline fp32 export vs ST: min {f['pipeline_fp32_cosine_min']:.6f}.",
        "",
        f"Cache (Zipf s={c['zipf_s']}, {c['queries']} queries in requests of {c['request_size']}, "
        f"{100 * c['repeat_fraction']:.1f}% repeats, ideal {c['ideal_speedup']:.2f}x): "
        f"{c['seconds_without']:.2f} s without, {c['seconds_with']:.2f} s with = **{c['speedup']:.2f}x**; "
        f"hit {c['hit_us_memory']:.2f} us (memory), {c['hit_us_sqlite']:.2f} us (SQLite). "
        "The ideal is queries / distinct queries; misses arrive in smaller batches than without the "
        "cache, which costs some of it."
        f" One query per request: {single['seconds_without']:.2f} s without, "
        f"{single['seconds_with']:.2f} s with = **{single['speedup']:.2f}x**.",
        "",
        md_table(["target", "value", "wanted", "met"], targets),
        modes_markdown(result["modes"], modes_setup).replace("# ", "## ", 1),
    ])


def run_runtime_bench(opts: RuntimeBenchOptions, targets: RuntimeBenchTargets) -> dict[str, Any]:
    """Build (or reuse) the models, measure everything, write ``runtime_bench.json`` and ``.md``."""
    pin_threads(opts.threads)
    texts = sts_sentences(opts.sts_file, opts.sentences)
    models, info = prepare_models(opts)
    info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "setup": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "threads": opts.threads, "batch_size": opts.batch_size, "max_seq_length": opts.max_seq_length,
            "sentences": len(texts), "repeats": opts.repeats, "teacher": opts.teacher,
            "sts_file": str(opts.sts_file), **info,
        },
        "speed": speed_and_overhead(models, texts, opts),
        "fidelity": fidelity(models, texts, opts),
        "cache": cache_bench(models, texts, opts),
        "modes": mode_bench(models["student"]["bundle"], texts, opts),
    }
    result["targets"] = check_targets(result, targets)
    result["setup"]["bench_seconds"] = round(time.perf_counter() - t0, 1)
    result["setup"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json_md(Path(opts.out_dir) / "runtime_bench", result, markdown(result))
    return result
