"""The benchmark's markdown report (sections, each a function of the JSON result) and Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embopt.bench.profiling import PHASES
from embopt.pipeline.params import BenchTargets


def _f(x: Any, fmt: str) -> str:
    try:
        return "–" if x is None else format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def header(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["setup"]
    thr = m["threads"]
    out = [
        f"# embopt benchmark ({'QUICK run: numbers not meaningful' if s['quick'] else 'full run'})\n",
        f"- date: {result['date']}; wall time {s['wall_s']} s",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB RAM; {m['platform']}",
        "- int8 ISA: " + ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in m["int8_isa"].items()),
        f"- threads: {s['threads']} for every backend (torch.set_num_threads={thr['torch_num_threads']}, "
        f"interop={thr['torch_interop_threads']}; ORT intra_op={thr['ort_intra_op_num_threads']}, "
        f"inter_op={thr['ort_inter_op_num_threads']}; env "
        + ", ".join(f"{k}={v}" for k, v in thr["env"].items()) + ")",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- data: {s['sts_pairs']} STSb dev pairs ({s['sts_sentences']} sentences) from `{s['sts_file']}`; "
        f"throughput on {s['speed_sentences']} of those sentences (batch 1: {s['bs1_sentences']}), "
        f"max_seq_length {s['max_seq_length']}, {s['repeats']} interleaved repeats, medians",
        f"- final variant: `{result['final']}`; anchors: {', '.join(f'`{a}`' for a in result['anchors'])}",
        "",
    ]
    c = s["contention"]
    busy = (c["load_average_1min_start"] or 0) > 0.5
    out += [f"- machine load: 1-min load average {c['load_average_1min_start']} at start, "
            f"{c['load_average_1min_end']} at end; this process used {c['process_cpu_per_wall_s']} "
            "CPU-seconds per second over the run"
            + (" (**busy machine: other processes competed for the cores; multi-thread numbers suffer "
               "most**)" if busy else ""), ""]
    return out + [f"> note: {note}\n" for note in result["notes"]]


def variants(result: dict[str, Any]) -> list[str]:
    s, rows = result["setup"], result["variants"]
    bs, hb = [str(b) for b in s["batch_sizes"]], str(s["headline_batch"])
    head = ["variant", "group", "backend", "prec", "Spearman", "retention", *[f"sent/s b{b}" for b in bs],
            f"x teacher (b{hb})", f"x best anchor (b{hb})", "p50/p95/p99 ms (b1, 1 thr)", "p50 ms 16 tok",
            "peak RSS MB", "MB on disk"]
    table = []
    for name, r in rows.items():
        lat, rss = r["latency_ms_bs1_1thread"], r["peak_rss"]
        table.append([
            f"`{name}`", r["group"], r["backend"], r["precision"], _f(r["sts_spearman"], ".2f"),
            _f(100 * r["retention"], ".1f") + "%", *[_f(r["throughput_sps"][b], ".0f") for b in bs],
            _f(r["speedup_vs_teacher"][hb], ".2f") + "x", _f(r["speedup_vs_best_anchor"][hb], ".2f") + "x",
            "/".join(_f(lat.get(k), ".2f") for k in ("p50_ms", "p95_ms", "p99_ms")) if lat else "–",
            _f(r["latency_ms_16tok_1thread"]["p50_ms"], ".2f"),
            _f(rss.get("rss_peak_mb"), ".0f") if "rss_peak_mb" in rss else rss.get("error", "–")[:40],
            _f(r["size_mb"], ".1f"),
        ])
    return ["\n## Variants\n", md_table(head, table),
            f"\nBest anchor at b{hb}: `{next(iter(rows.values()))['best_anchor'][hb]}`. "
            f"Latency for 16 tokens: {s['lat16_sentences']} STSb sentences of exactly {s['lat16_tokens']} "
            "tokens ([CLS]/[SEP] included), batch 1, 1 thread. Peak RSS: a fresh process per variant "
            "(imports + model + embedding 128 sentences).\n"]


def targets(result: dict[str, Any], t: BenchTargets) -> list[str]:
    labels = {  # each target: its label, and how its measured value x reads
        "speedup_vs_teacher_at_retention": (
            f"final >= {t.min_speedup_vs_teacher:g}x teacher throughput at >= {100 * t.min_retention:g}%"
            " retention",
            lambda x: f"{x['value']:.2f}x at b{x['batch']}, retention {100 * x['retention']:.1f}%"),
        "latency_p50_16tok": (
            f"batch-1 p50 <= {t.max_latency_p50_16tok_ms:g} ms on 1 thread, 16-token sentence",
            lambda x: f"{x['value_ms']:.3f} ms ({x['tokens']} tokens)"),
        "vs_st_int8": (
            f">= {t.min_speedup_vs_st_int8:g}x sentence-transformers int8 export at equal retention",
            lambda x: f"{x['value']:.2f}x `{x['anchor']}` at b{x['batch']}; retention "
            f"{100 * x['retention']:.1f}% vs {100 * x['anchor_retention']:.1f}%"),
        "int8_vs_fp32_parent": (
            f"int8 >= {t.min_int8_vs_fp32_parent:g}x its fp32 parent",
            lambda x: f"{x['value']:.2f}x: `{x['int8']}` vs `{x['parent']}` at b{x['batch']}"),
        "roofline_int8": (f"final uses >= {t.min_pct_of_int8_peak:g}% of the measured int8 peak",
                          lambda x: f"{x['value_pct']:.1f}% at b{x['batch']}"),
    }
    rows = []
    for key, (label, measured) in labels.items():
        x = result["targets"].get(key)
        ok = isinstance(x, dict)
        rows.append([label, measured(x) if ok else "not measured",
                     ("**met**" if x["met"] else "not met") if ok else "–",
                     limits(result, key, x) if ok and not x["met"] else ""])
    return ["\n## Targets\n", md_table(["target", "measured", "status", "what limits it (this run)"], rows)]


INT8_MATMULS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul")


def limits(result: dict[str, Any], key: str, x: dict[str, Any]) -> str:
    """Where the time of a missed target goes, from this run's phase split and ORT profile."""
    rows = result["variants"]
    name = x.get("int8") or result["final"]
    r = rows[name]
    ops = r["profile"].get("by_op_pct", {})
    int8_mm = sum(ops.get(op, 0.0) for op in INT8_MATMULS)
    other = [f"{op} {pct:.0f}%" for op, pct in ops.items() if op not in INT8_MATMULS][:4]
    kernels = (f"int8 matmuls are {int8_mm:.0f}% of `{name}`'s kernel time, the rest other ops "
               f"({', '.join(other)}, ...)" if ops else "no ORT profile")
    ph = r["phases_s"].get("b1" if key == "latency_p50_16tok" else f"b{result['setup']['headline_batch']}")
    if not ph:
        return kernels
    pct = {k: 100 * v / (ph["total"] or 1e-12) for k, v in ph.items()}
    split = (f"session run {pct['model_run'] + pct['pooling_normalize']:.0f}% of a call, tokenize "
             f"{pct['tokenize']:.0f}%, rest {pct['build_tensors'] + pct['other']:.0f}%")
    if key == "latency_p50_16tok":
        return f"{split} ({1e3 * ph['total']:.2f} ms a call); {kernels}"
    return f"{split}; {kernels}"


def time_split(result: dict[str, Any]) -> list[str]:
    s, rows = result["setup"], result["variants"]
    phases, ops = [], []
    for name, r in rows.items():
        for key in ("b1", "b32"):
            ph = r["phases_s"].get(key)
            if ph:
                tot = ph["total"] or 1e-12
                phases.append([f"`{name}`", key, r["backend"], _f(1e3 * ph["total"], ".2f")]
                              + [_f(100 * ph[p] / tot, ".0f") + "%" for p in PHASES])
        p = r["profile"]
        if "by_op_pct" in p:
            top = ", ".join(f"{op} {pct:.0f}%" for op, pct in list(p["by_op_pct"].items())[:6])
            ops.append([f"`{name}`", p.get("kind", ""), top, f"`traces/{p.get('trace', '')}`"])
        elif "error" in p:
            ops.append([f"`{name}`", "error", p["error"][:80], "–"])
    return [
        "\n## Where the time goes\n",
        "Share of wall time per phase (mean per call at batch 1 over the batch-1 sentences; at batch 32, "
        f"one call over {s['profile_sentences']} sentences, the run with the median total of "
        f"{s['phase_repeats']}). torch/ST: hooks on the real `encode` "
        "(tokenizer call, `convert_to_tensors`, Transformer module, Pooling+Normalize modules). embopt "
        "runtime: its `timings` counters; pooling/normalisation run inside the graph and are split out "
        "of the session run by the ORT profile.\n",
        md_table(["variant", "batch", "backend", "ms/call", *PHASES], phases),
        "\nTop operators (share of kernel time; ORT profile, or torch.profiler self CPU time):\n",
        md_table(["variant", "profiler", "top ops", "trace (MLflow artifact)"], ops),
    ]


def sweeps(result: dict[str, Any]) -> list[str]:
    t, rows = result["setup"]["threads"], result["variants"]
    bs = [str(b) for b in result["setup"]["batch_sizes"]]
    threads, batches = [], []
    for name, r in rows.items():
        ts, sps, base = r["thread_sweep"], r["throughput_sps"], r["throughput_sps"].get("1")
        cells = []
        for b in ("b1", "b32"):
            one, many = ts.get(f"t1_{b}"), ts.get(f"t{t}_{b}")
            cells += [_f(one, ".0f"), _f(many, ".0f"), _f(many / one, ".2f") + "x" if many and one else "–"]
        threads.append([f"`{name}`", *cells])
        batches.append([f"`{name}`"] + [_f(sps[b], ".0f") + (f" ({sps[b] / base:.1f}x)" if base else "")
                                        for b in bs])
    return [
        "\n## Thread sweep (sentences/s)\n",
        md_table(["variant", "b1, 1 thr", f"b1, {t} thr", "scaling", "b32, 1 thr", f"b32, {t} thr",
                  "scaling"], threads),
        "\n## Batch sweep (sentences/s; ratio to batch 1)\n",
        md_table(["variant"] + [f"b{b}" for b in bs], batches),
    ]


def truncation(result: dict[str, Any]) -> list[str]:
    s, tr = result["setup"], result["truncation_sweep"]
    if not tr:
        return ["\n## Truncation sweep\n", "not run\n"]
    rows = []
    for name, per in tr.items():
        for L, r in per.items():
            if isinstance(r, dict):
                rows.append([f"`{name}`", L, r["status"], "", "", "", ""] if "status" in r else [
                    f"`{name}`", L, _f(r["long_texts_per_s"], ".1f"), _f(r["long_mean_tokens"], ".0f"),
                    _f(r["cos_vs_longest"], ".3f"), _f(r["sts_sentences_per_s"], ".0f"),
                    _f(r["sts_spearman"], ".2f")])
    out = [
        "\n## Truncation sweep\n",
        f"Long texts: {s['long_texts']} documents of >= {s['long_min_words']} words (consecutive "
        "corpus paragraphs), batch 32; STSb: the throughput sentences, batch 32; Spearman on the STSb "
        "dev pairs (identical inputs once no sentence is cut: reused). cos: mean cosine to the "
        "embedding at the longest length.\n",
        md_table(["variant", "max_seq_length", "long texts/s", "mean tokens", "cos vs longest", "STSb sent/s",
                  "STSb Spearman"], rows),
    ]
    cuts = [f"`{n}` {100 * per['time_cut_128_vs_512']:.0f}%" for n, per in tr.items()
            if "time_cut_128_vs_512" in per]
    if cuts:
        out.append("\nTime saved on long texts by truncating at 128 instead of 512 tokens (the seed claims "
                   "~60%): " + ", ".join(cuts) + ".\n")
    return out


def roofline(result: dict[str, Any]) -> list[str]:
    s, pk, rows = result["setup"], result["peaks"], []
    for name, r in result["variants"].items():
        b = str(r["roofline_best_batch"])
        rf = r["roofline"][b]
        rows.append([f"`{name}`", r["precision"], rf.get("status", "–"), "", "", "", "", ""]
                    if "gops_per_sentence" not in rf else [
                        f"`{name}`", r["precision"], _f(rf["mean_tokens"], ".1f"),
                        _f(rf["gops_per_sentence"], ".3f"), f"b{b}", _f(rf["achieved_gops_s"], ".0f"),
                        _f(rf["pct_of_int8_peak"], ".1f") + "%", _f(rf["pct_of_fp32_peak"], ".1f") + "%"])
    return [
        "\n## Roofline\n",
        f"Measured in this run on {s['threads']} threads: int8 peak {pk['int8']['peak_ops_s'] / 1e9:.0f} "
        f"GOP/s (ORT MatMulInteger u8 x s8, {pk['int8']['n']}^3), fp32 peak "
        f"{pk['fp32']['peak_ops_s'] / 1e9:.0f} GFLOP/s (torch.matmul, {pk['fp32']['n']}^3). Work per "
        "sentence = matrix products of the encoder (QKV/output projections, FFN, QK^T, AV; 2 ops per "
        "multiply-add) from the config and the real token counts; achieved = work x throughput at the "
        "variant's best batch size.\n",
        md_table(["variant", "precision", "mean tokens", "GOP/sentence", "batch", "achieved GOP/s",
                  "% int8 peak", "% fp32 peak"], rows),
        f"\nMethod: {s['timing_method']}. RSS: {s['rss_method']}.\n",
    ]


def markdown_report(result: dict[str, Any], targets_params: BenchTargets) -> str:
    """The whole report: main table, targets, profile, sweeps, roofline, method notes."""
    return "\n".join([*header(result), *variants(result), *targets(result, targets_params),
                      *time_split(result), *sweeps(result), *truncation(result), *roofline(result)])


def pareto_plot(result: dict[str, Any], path: Path) -> Path:
    """Throughput at the headline batch (log) vs retention; anchors grey squares, ours coloured, the final a
    star, and the Pareto front of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hb, final = str(result["setup"]["headline_batch"]), result["final"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    pts = []
    for name, r in result["variants"].items():
        x, y = 100 * r["retention"], r["throughput_sps"][hb]
        pts.append((x, y))
        anchor = r["group"] == "anchor"
        ax.scatter([x], [y], marker="s" if anchor else ("*" if name == final else "o"),
                   s=140 if name == final else 60, color="0.5" if anchor else None, edgecolor="black",
                   zorder=3, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front: list[tuple[float, float]] = []
    for x, y in sorted(pts, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    front.sort()  # ascending retention, descending throughput: the staircase of non-dominated points
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color="tab:red", lw=1, alpha=0.6,
                zorder=2, label="Pareto front")
    ax.set_yscale("log")
    ax.set_xlabel("retention of the teacher's STSb dev Spearman (%)")
    ax.set_ylabel(f"throughput at batch {hb} (sentences/s, log)")
    ax.set_title(f"embopt bench {result['date'][:10]}: {result['setup']['threads']} threads, "
                 f"{result['machine']['cpu'][:40]}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
