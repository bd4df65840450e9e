"""The benchmark's markdown report and Pareto plot, rendered from its JSON result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embopt.bench.profiling import PHASES


def _f(x: Any, fmt: str = ".1f", none: str = "–") -> str:
    if x is None:
        return none
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_report(result: dict[str, Any]) -> str:
    """The whole report: main table, targets, profile, sweeps, roofline, method notes."""
    m, s, rows = result["machine"], result["setup"], result["variants"]
    bs = [str(b) for b in s["batch_sizes"]]
    hb = str(s["headline_batch"])
    thr = m["threads"]
    out = [
        f"# embopt benchmark ({'QUICK run: numbers not meaningful' if s['quick'] else 'full run'})\n",
        f"- date: {result['date']}; wall time {s.get('wall_s', '?')} s",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB RAM; {m['platform']}",
        f"- threads: {s['threads']} for every backend (torch.set_num_threads={thr['torch_num_threads']}, "
        f"interop={thr['torch_interop_threads']}; ORT intra_op={thr['ort_intra_op_num_threads']}, "
        f"inter_op={thr['ort_inter_op_num_threads']}; env "
        + ", ".join(f"{k}={v}" for k, v in thr["env"].items())
        + ")",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- data: {s['sts_pairs']} STSb dev pairs ({s['sts_sentences']} sentences) from `{s['sts_file']}`; "
        f"throughput on {s['speed_sentences']} of those sentences (batch 1: {s['bs1_sentences']}), "
        f"max_seq_length {s['max_seq_length']}, {s['repeats']} interleaved repeats, medians",
        f"- final variant: `{result['final']}`; anchors: {', '.join(f'`{a}`' for a in result['anchors'])}",
        "",
    ]
    c = s.get("contention")
    if c:
        busy = (c["load_average_1min_start"] or 0) > 0.5
        out.append(
            f"- machine load: 1-min load average {c['load_average_1min_start']} at start, "
            f"{c['load_average_1min_end']} at end; this process used "
            f"{c['process_cpu_per_wall_s']} CPU-seconds per second over the run"
            + (
                " (**busy machine: other processes competed for the cores; multi-thread numbers suffer "
                "most**)"
                if busy
                else ""
            )
        )
        out.append("")
    for note in result.get("notes", []):
        out.append(f"> note: {note}\n")

    out.append("\n## Variants\n")
    head = (
        ["variant", "group", "backend", "prec", "Spearman", "retention"]
        + [f"sent/s b{b}" for b in bs]
        + [
            f"x teacher (b{hb})",
            f"x best anchor (b{hb})",
            "p50/p95/p99 ms (b1, 1 thr)",
            "p50 ms 16 tok",
            "peak RSS MB",
            "MB on disk",
        ]
    )
    table = []
    for name, r in rows.items():
        lat = r["latency_ms_bs1_1thread"]
        rss = r["peak_rss"]
        table.append(
            [
                f"`{name}`",
                r["group"],
                r["backend"],
                r["precision"],
                _f(r["sts_spearman"], ".2f"),
                _f(100 * r["retention"], ".1f") + "%",
                *[_f(r["throughput_sps"][b], ".0f") for b in bs],
                _f(r["speedup_vs_teacher"][hb], ".2f") + "x",
                _f(r["speedup_vs_best_anchor"][hb], ".2f") + "x",
                "/".join(_f(lat.get(k), ".2f") for k in ("p50_ms", "p95_ms", "p99_ms")) if lat else "–",
                _f(r["latency_ms_16tok_1thread"]["p50_ms"], ".2f"),
                _f(rss.get("rss_peak_mb"), ".0f") if "rss_peak_mb" in rss else rss.get("error", "–")[:40],
                _f(r["size_mb"], ".1f"),
            ]
        )
    out.append(_table(head, table))
    out.append(
        f"\nBest anchor at b{hb}: `{next(iter(rows.values()))['best_anchor'][hb]}`. "
        f"Latency for 16 tokens: {s['lat16_sentences']} STSb sentences of exactly {s['lat16_tokens']} "
        "tokens ([CLS]/[SEP] included), batch 1, 1 thread. Peak RSS: a fresh process per variant "
        "(imports + model + embedding 128 sentences).\n"
    )

    out.append("\n## Targets\n")
    tg = result.get("targets", {})
    trows = []
    names = {
        "speedup_15x_at_97pct": "final >= 15x teacher throughput at >= 97% retention",
        "latency_p50_16tok_le_1ms": "batch-1 p50 <= 1 ms on 1 thread, 16-token sentence",
        "vs_st_int8_3x": ">= 3x sentence-transformers int8 export at equal retention",
        "roofline_50pct_int8": "final uses >= 50% of the measured int8 peak",
    }
    for key, label in names.items():
        t = tg.get(key)
        if not isinstance(t, dict):
            trows.append([label, "not measured", "–"])
            continue
        if key == "speedup_15x_at_97pct":
            val = f"{t['value']:.2f}x at b{t['batch']}, retention {100 * t['retention']:.1f}%"
        elif key == "latency_p50_16tok_le_1ms":
            val = f"{t['value_ms']:.3f} ms ({t['tokens']} tokens)"
        elif key == "vs_st_int8_3x":
            val = (
                f"{t['value']:.2f}x `{t['anchor']}` at b{t['batch']}; retention {100 * t['retention']:.1f}% "
                f"vs {100 * t['anchor_retention']:.1f}%"
            )
        else:
            val = f"{t['value_pct']:.1f}% at b{t['batch']}"
        trows.append([label, val, "**met**" if t["met"] else "not met"])
    out.append(_table(["target", "measured", "status"], trows))

    out.append("\n## Where the time goes\n")
    out.append(
        "Share of wall time per phase (mean per call at batch 1 over the batch-1 sentences; at batch 32, "
        f"one call over {s['profile_sentences']} sentences, the run with the median total of "
        f"{s.get('phase_repeats', 1)}). torch/ST: hooks on the real `encode` "
        "(tokenizer call, `convert_to_tensors`, Transformer module, Pooling+Normalize modules). embopt "
        "runtime: its `timings` counters; pooling/normalisation run inside the graph and are split out "
        "of the session run by the ORT profile.\n"
    )
    prow = []
    for name, r in rows.items():
        for key in ("b1", "b32"):
            ph = r["phases_s"].get(key)
            if not ph:
                continue
            tot = ph["total"] or 1e-12
            prow.append(
                [f"`{name}`", key, r["backend"], _f(1e3 * ph["total"], ".2f")]
                + [_f(100 * ph[p] / tot, ".0f") + "%" for p in PHASES]
            )
    out.append(_table(["variant", "batch", "backend", "ms/call"] + list(PHASES), prow))
    out.append("\nTop operators (share of kernel time; ORT profile, or torch.profiler self CPU time):\n")
    orow = []
    for name, r in rows.items():
        p = r.get("profile") or {}
        if "by_op_pct" in p:
            top = list(p["by_op_pct"].items())[:6]
            orow.append(
                [
                    f"`{name}`",
                    p.get("kind", ""),
                    ", ".join(f"{op} {pct:.0f}%" for op, pct in top),
                    f"`traces/{p.get('trace', '')}`",
                ]
            )
        elif "error" in p:
            orow.append([f"`{name}`", "error", p["error"][:80], "–"])
    out.append(_table(["variant", "profiler", "top ops", "trace (MLflow artifact)"], orow))

    out.append("\n## Thread sweep (sentences/s)\n")
    th = []
    t = s["threads"]
    for name, r in rows.items():
        ts = r["thread_sweep"]
        b1_1, b1_n = ts.get("t1_b1"), ts.get(f"t{t}_b1")
        b32_1, b32_n = ts.get("t1_b32"), ts.get(f"t{t}_b32")
        th.append(
            [
                f"`{name}`",
                _f(b1_1, ".0f"),
                _f(b1_n, ".0f"),
                _f(b1_n / b1_1, ".2f") + "x" if b1_1 and b1_n else "–",
                _f(b32_1, ".0f"),
                _f(b32_n, ".0f"),
                _f(b32_n / b32_1, ".2f") + "x" if b32_1 and b32_n else "–",
            ]
        )
    out.append(
        _table(
            ["variant", "b1, 1 thr", f"b1, {t} thr", "scaling", "b32, 1 thr", f"b32, {t} thr", "scaling"], th
        )
    )

    out.append("\n## Batch sweep (sentences/s; ratio to batch 1)\n")
    bsw = []
    for name, r in rows.items():
        base = r["throughput_sps"].get("1")
        bsw.append(
            [f"`{name}`"]
            + [
                _f(r["throughput_sps"][b], ".0f")
                + (f" ({r['throughput_sps'][b] / base:.1f}x)" if base else "")
                for b in bs
            ]
        )
    out.append(_table(["variant"] + [f"b{b}" for b in bs], bsw))

    out.append("\n## Truncation sweep\n")
    tr = result.get("truncation_sweep") or {}
    if tr:
        out.append(
            f"Long texts: {s['long_texts']} documents of >= {s['long_min_words']} words (consecutive "
            "corpus paragraphs), batch 32; STSb: the throughput sentences, batch 32; Spearman on the STSb "
            "dev pairs (identical inputs once no sentence is cut: reused). cos: mean cosine to the "
            "embedding at the longest length.\n"
        )
        trow = []
        for name, per in tr.items():
            for L, r in per.items():
                if not isinstance(r, dict):
                    continue
                if "status" in r:
                    trow.append([f"`{name}`", L, r["status"], "", "", "", ""])
                    continue
                trow.append(
                    [
                        f"`{name}`",
                        L,
                        _f(r["long_texts_per_s"], ".1f"),
                        _f(r["long_mean_tokens"], ".0f"),
                        _f(r["cos_vs_longest"], ".3f"),
                        _f(r["sts_sentences_per_s"], ".0f"),
                        _f(r["sts_spearman"], ".2f"),
                    ]
                )
        out.append(
            _table(
                [
                    "variant",
                    "max_seq_length",
                    "long texts/s",
                    "mean tokens",
                    "cos vs longest",
                    "STSb sent/s",
                    "STSb Spearman",
                ],
                trow,
            )
        )
        cuts = [
            f"`{n}` {100 * per['time_cut_128_vs_512']:.0f}%"
            for n, per in tr.items()
            if "time_cut_128_vs_512" in per
        ]
        if cuts:
            out.append(
                "\nTime saved on long texts by truncating at 128 instead of 512 tokens (the seed claims "
                "~60%): " + ", ".join(cuts) + ".\n"
            )
    else:
        out.append("not run\n")

    out.append("\n## Roofline\n")
    pk = result["peaks"]
    out.append(
        f"Measured in this run on {s['threads']} threads: int8 peak {pk['int8']['peak_ops_s'] / 1e9:.0f} "
        f"GOP/s (ORT MatMulInteger u8 x s8, {pk['int8']['n']}^3), fp32 peak "
        f"{pk['fp32']['peak_ops_s'] / 1e9:.0f} GFLOP/s (torch.matmul, {pk['fp32']['n']}^3). Work per "
        "sentence = matrix products of the encoder (QKV/output projections, FFN, QK^T, AV; 2 ops per "
        "multiply-add) from the config and the real token counts; achieved = work x throughput at the "
        "variant's best batch size.\n"
    )
    rrow = []
    for name, r in rows.items():
        b = str(r["roofline_best_batch"])
        rf = r["roofline"][b]
        if "gops_per_sentence" not in rf:
            rrow.append([f"`{name}`", r["precision"], rf.get("status", "–"), "", "", "", "", ""])
            continue
        rrow.append(
            [
                f"`{name}`",
                r["precision"],
                _f(rf["mean_tokens"], ".1f"),
                _f(rf["gops_per_sentence"], ".3f"),
                f"b{b}",
                _f(rf["achieved_gops_s"], ".0f"),
                _f(rf["pct_of_int8_peak"], ".1f") + "%",
                _f(rf["pct_of_fp32_peak"], ".1f") + "%",
            ]
        )
    out.append(
        _table(
            [
                "variant",
                "precision",
                "mean tokens",
                "GOP/sentence",
                "batch",
                "achieved GOP/s",
                "% int8 peak",
                "% fp32 peak",
            ],
            rrow,
        )
    )
    out.append(f"\nMethod: {s['timing_method']}. RSS: {s['rss_method']}.\n")
    return "\n".join(out)


def pareto_plot(result: dict[str, Any], path: Path) -> Path:
    """Throughput at the headline batch (log) vs retention; anchors grey squares, ours coloured, the final a
    star, and the Pareto front of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hb = str(result["setup"]["headline_batch"])
    rows = result["variants"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    pts = []
    for name, r in rows.items():
        x, y = 100 * r["retention"], r["throughput_sps"][hb]
        pts.append((x, y))
        anchor = r["group"] == "anchor"
        ax.scatter(
            [x],
            [y],
            marker="s" if anchor else ("*" if name == result.get("final") else "o"),
            s=140 if name == result.get("final") else 60,
            color="0.5" if anchor else None,
            edgecolor="black",
            zorder=3,
            label=name,
        )
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = []
    for x, y in sorted(pts, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    front.sort()  # ascending retention, descending throughput: the staircase of non-dominated points
    if len(front) > 1:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="pre",
            color="tab:red",
            lw=1,
            alpha=0.6,
            zorder=2,
            label="Pareto front",
        )
    ax.set_yscale("log")
    ax.set_xlabel("retention of the teacher's STSb dev Spearman (%)")
    ax.set_ylabel(f"throughput at batch {hb} (sentences/s, log)")
    m = result["machine"]
    ax.set_title(
        f"embopt bench {result['date'][:10]}: {result['setup']['threads']} threads, {m['cpu'][:40]}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
