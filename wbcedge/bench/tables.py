"""How a benchmark result is shown: new/old comparison, rich tables for the terminal, Markdown for docs/bench.md.

Everything here reads the plain result dict that `wbcedge.bench.runner.run_bench`
returns (or a saved bench JSON); nothing here measures anything.
"""

from __future__ import annotations

from wbcedge.bench import KERAS
from wbcedge.bench.floors import row_label

# ---------------------------------------------------------------- compare

COMPARED = ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "load_ms", "first_ms", "rss_peak_mb", "size_bytes")


def _key(row: dict) -> tuple:
    return (row.get("backend"), row.get("precision"), row.get("threads"))


def compare(new: dict, old: dict) -> dict:
    """new/old ratios per row matched by backend/precision/threads, for the pipeline, and what did not match."""
    def ratio(a, b):
        return a / b if a is not None and b not in (None, 0) else None

    new_rows = list(new["rows"]) + ([new["baseline"]] if new.get("baseline") else [])
    old_rows = {_key(r): r for r in list(old["rows"]) + ([old["baseline"]] if old.get("baseline") else [])}
    rows, unmatched = [], []
    for r in new_rows:
        o = old_rows.pop(_key(r), None)
        if o is None:
            unmatched.append(f"{row_label(r)}: only in the new result")
            continue
        rows.append({"backend": r["backend"], "precision": r["precision"], "threads": r["threads"],
                     "ratios": {k: ratio(r.get(k), o.get(k)) for k in COMPARED}})
    unmatched += [f"{row_label(o)}: only in the old result" for o in old_rows.values()]
    pipe = None
    if new.get("pipeline") and old.get("pipeline"):
        n, o = new["pipeline"], old["pipeline"]
        pipe = {"fps": ratio(n["fps"], o["fps"]),
                "stage_ms_per_frame": {s: ratio(v, o["stage_ms_per_frame"].get(s))
                                       for s, v in n["stage_ms_per_frame"].items()},
                "same_setup": all(n[k] == o[k] for k in ("file", "threads", "frames_source"))}
    notes = []
    if new["machine"].get("cpu") != old["machine"].get("cpu"):
        notes.append(f"different machines: {old['machine'].get('cpu')} (old) vs {new['machine'].get('cpu')} (new)")
    if new["bundle"]["path"] != old["bundle"]["path"]:
        notes.append(f"different bundles: {old['bundle']['path']} (old) vs {new['bundle']['path']} (new)")
    return {"old_created": old.get("created"), "rows": rows, "pipeline": pipe, "unmatched": unmatched, "notes": notes}


# ---------------------------------------------------------------- tables

def _f(value, fmt: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def _num(value, none: str = "-") -> str:
    """3 significant figures, no exponent: 0.142, 1.42, 14.2, 142, 1420."""
    if value is None:
        return none
    a = abs(value)
    return f"{value:.3f}" if a < 1 else f"{value:.2f}" if a < 10 else f"{value:.1f}" if a < 100 else f"{value:.0f}"


def _acc(row: dict) -> str:
    if row.get("accuracy") is None:
        return "-"
    text = f"{100 * row['accuracy']:.1f}"
    ci = row.get("accuracy_ci95")
    if ci:
        text += f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})"
    if row.get("accuracy_source") == "export report":
        text += " *"
    return text


ROW_HEADERS = ("model", "threads", "MB", "load", "first", "p50", "p90", "p99", "img/s", "RSS",
               "spread", "accuracy % (95% CI)", "vs Keras")


def row_cells(row: dict) -> list[str]:
    threads = "TF" if row.get("threads") is None else str(row["threads"])
    name = "keras predict_on_batch" if row["backend"] == KERAS else f"{row['backend']} {row['precision']}"
    speedup = "1x" if row["backend"] == KERAS else (f"{_num(row['speedup'])}x" if row.get("speedup") else "-")
    return [name, threads, _num(row["size_mb"]), _num(row["load_ms"]), _num(row["first_ms"]),
            _num(row["p50_ms"]), _num(row["p90_ms"]), _num(row["p99_ms"]), _num(row["throughput_per_s"]),
            _f(row["rss_peak_mb"], ".0f"), _f(row.get("spread_pct"), ".0f") + "%", _acc(row), speedup]


def _all_rows(result: dict) -> list[dict]:
    return list(result["rows"]) + ([result["baseline"]] if result.get("baseline") else [])


def footnotes(result: dict) -> list[str]:
    o = result["options"]
    out = [f"machine: {machine_line_of(result)}",
           f"times in ms at batch 1 on real preprocessed crops: {o['repeats']} rounds, each running every row in a "
           f"fresh process ({o['warmup']} warm-up calls, then {o['runs']} timed calls); load and first call = median "
           "over the rounds, RSS = peak (MB); img/s = 1000 / mean ms; spread = (max - min) / median of the rounds' "
           f"p50 (the benchmark's own noise); MB = file size; XNNPACK: {result.get('xnnpack', '?')}"]
    if any(r.get("accuracy_source") == "export report" for r in result["rows"]):
        out.append("* accuracy from the bundle's export report (its test split); give --data to measure it here")
    if any(r.get("accuracy_source") == "--data" for r in result["rows"]):
        out.append(f"accuracy with exact (Clopper-Pearson) 95% interval on {o['data']}")
    base = result.get("baseline")
    if base:
        mp = base["model_predict"]["p50_ms"]
        best = max((r for r in result["rows"] if r.get("speedup")), key=lambda r: r["speedup"], default=None)
        line = (f"vs Keras = Keras predict_on_batch p50 / row p50 (the compiled predict_on_batch on one image: "
                f"{base['p50_ms']:.2f} ms; model.predict, what most code calls: {mp:.1f} ms")
        if best is not None:
            line += f", {best['speedup_vs_model_predict']:.1f}x slower than {row_label(best)}"
        out.append(line + "); TF = TensorFlow's default threads")
    out += result.get("notes", [])
    return out


def machine_line_of(result: dict) -> str:
    from wbcedge.bench.machine import machine_line
    return machine_line(result["machine"])


def _table(title: str, headers, left: int = 1, caption: str | None = None):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < left else "right", no_wrap=i < left)
    return table


def rows_table(result: dict):
    table = _table(f"wbcedge bench: {result['bundle']['path']}", ROW_HEADERS)
    for row in _all_rows(result):
        table.add_row(*row_cells(row), style="dim" if row["backend"] == KERAS else None)
    return table


def pipeline_rows(p: dict) -> list[list[str]]:
    total = p["wall_ms_per_frame"]
    rows = [[s, _num(ms), _f(100 * ms / total if total else None, ".1f") + "%"]
            for s, ms in p["stage_ms_per_frame"].items()]
    rows.append(["sum of stages", _num(p["stages_ms_per_frame"]),
                 _f(100 * p["stages_ms_per_frame"] / total if total else None, ".1f") + "%"])
    rows.append(["end to end (wall)", _num(total), "100.0%"])
    return rows


def pipeline_caption(p: dict) -> str:
    return (f"{p['fps']:.1f} frames/s end to end (spread {_f(p['spread_pct'], '.1f')}% across blocks), "
            f"{p['frames']} frames of {p['frames_source']}, {p['cells_per_frame']:.1f} cells per frame, "
            f"{p['backend']} {p['precision']} at {p['threads']} threads; stages miss the wall clock by "
            f"{p['stage_gap_pct']:+.1f}%")


def pipeline_table(result: dict):
    p = result["pipeline"]
    table = _table("pipeline per frame", ("stage", "ms/frame", "share"))
    for r in pipeline_rows(p):
        table.add_row(*r)
    return table


def compare_table(cmp: dict):
    table = _table(f"new / old (old: {cmp['old_created']}): below 1 is better, except img/s",
                   ("model", "threads", "p50", "p90", "p99", "img/s", "load", "first", "RSS", "size"))
    for r in cmp["rows"]:
        cells = []
        for k in COMPARED:
            v = r["ratios"][k]
            better = v is not None and ((v > 1.05) if k == "throughput_per_s" else (v < 0.95))
            worse = v is not None and ((v < 0.95) if k == "throughput_per_s" else (v > 1.05))
            text = _f(v, ".2f")
            cells.append(f"[green]{text}[/]" if better else f"[red]{text}[/]" if worse else text)
        threads = "TF" if r["threads"] is None else str(r["threads"])
        name = "keras predict_on_batch" if r["backend"] == KERAS else f"{r['backend']} {r['precision']}"
        table.add_row(name, threads, *cells)
    return table


def markdown_tables(result: dict) -> str:
    """The same tables as Markdown (docs/bench.md)."""
    lines = ["| " + " | ".join(ROW_HEADERS) + " |", "|" + "---|" * len(ROW_HEADERS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in _all_rows(result)]
    lines.append("")
    lines += [f"- {n}" for n in footnotes(result)]
    if result.get("pipeline"):
        p = result["pipeline"]
        lines += ["", "| stage | ms/frame | share |", "|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in pipeline_rows(p)]
        lines += ["", pipeline_caption(p) + "."]
    return "\n".join(lines)
