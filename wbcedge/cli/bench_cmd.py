"""`wbcedge bench`: speed, memory and accuracy of a bundle on this machine, as a table and as JSON.

No TensorFlow in this process: every model runs in a fresh worker process, and
only the optional Keras baseline's worker imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, err_console, examples, fail, print_error, write_json

FLOOR_HELP = ("Fail (exit 1) when a figure breaks a bound: [BACKEND[/PRECISION[/THREADS]]:]METRIC(>=|<=|=)VALUE, "
              "e.g. fps=30, speedup=10, p50_ms<=5, tflite/int8:p99_ms<=8, accuracy>=95. '=' means at least for "
              "fps, throughput, speedup, accuracy (percent) and at most for p50_ms, p90_ms, p99_ms, first_ms, load_ms, "
              "rss_mb, size_mb, spread_pct, stage_gap_pct. Repeat the option for several floors (default: none).")


def _csv(value: str | None, what: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if not items:
        fail(f"--{what} is empty; give a comma-separated list such as {','.join(allowed or ('1', '2'))}")
    if allowed:
        bad = [v for v in items if v not in allowed]
        if bad:
            fail(f"--{what} {value}: {', '.join(bad)} not understood; choose from {', '.join(allowed)}")
    return items


@app.command("bench", rich_help_panel="On the device (no TensorFlow)", epilog=examples(
        "wbcedge bench                                    # the built-in bundle, writes runs/bench/bench-<date>-<time>.json",
        "wbcedge bench my-bundle/ --data runs/pbc/manifest.split.csv --threads 1,4 --floor fps=10"))
def bench_cmd(
    bundle: Path = typer.Argument(None, help="Bundle folder or archive (default: the built-in one).",
                                  show_default=False),
    backends: str = typer.Option(None, "--backends", help="Comma-separated: tflite,onnx (default: all in the bundle)."),
    precision: str = typer.Option(None, "--precision", help="Comma-separated: int8,fp32 (default: all in the bundle)."),
    threads: str = typer.Option(None, "--threads", help="Comma-separated thread counts, e.g. 1,2,4 "
                                                        "(default: 1 and min(4, cores))."),
    runs: int = typer.Option(100, "--runs", help="Timed inferences per configuration per round (batch 1)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed inferences before timing."),
    repeats: int = typer.Option(3, "--repeats", help="Rounds: each runs every configuration once, in a fresh "
                                                     "process; the spread of their p50 is the benchmark's own noise."),
    data: Path = typer.Option(None, "--data", help="Labelled crops for accuracy with a 95% interval: a folder of "
                                                   "class folders, or a manifest (its test split) (default: none: no "
                                                   "accuracy)."),
    frames: Path = typer.Option(None, "--frames", help="Folder of microscope frames for the pipeline "
                                                       "(default: the built-in sample frames)."),
    pipeline_frames: int = typer.Option(200, "--pipeline-frames", help="Frames to time the pipeline on "
                                                                       "(the frames are looped over)."),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Also time the full pipeline on frames."),
    keras_run: Path = typer.Option(None, "--keras-run", help="Run folder for the Keras baseline (predict_on_batch; model.predict second) "
                                                             "(default: the bundle's source_run under training/runs/ "
                                                             "or runs/; needs TensorFlow)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Measure the Keras baseline when possible."),
    profile: Path = typer.Option(None, "--profile", help="Camera profile .toml, as for `wbcedge run --profile`: the "
                                 "pipeline then uses its focus threshold and scale, as run does (default: none: like "
                                 "run without one, no focus stage)."),
    compare_to: Path = typer.Option(None, "--compare", help="An earlier bench JSON: print new/old per matching row "
                                                                      "(default: none)."),
    floors: list[str] = typer.Option(None, "--floor", help=escape(FLOOR_HELP)),
    out: Path = typer.Option(None, "--out", "-o", help="Where to keep the result JSON "
                                                       "(default: runs/bench/bench-<date>-<time>.json)."),
    markdown: Path = typer.Option(None, "--markdown", help="Also write the tables as Markdown (for docs/bench.md) "
                                                                 "(default: none)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Benchmark a bundle on this machine: latency, load time, memory, size, accuracy, pipeline frames/s."""
    from wbcedge.bench.floors import check_floors, parse_floor
    from wbcedge.bench.runner import BenchOptions, default_result_path, load_result, run_bench
    from wbcedge.bench.tables import (
        compare,
        compare_table,
        footnotes,
        markdown_tables,
        pipeline_caption,
        pipeline_table,
        rows_table,
    )
    from wbcedge.bundle import load_bundle

    thread_list = None
    if threads is not None:
        try:
            thread_list = tuple(int(t) for t in _csv(threads, "threads"))
        except ValueError:
            fail(f"--threads {threads}: give whole numbers separated by commas, e.g. 1,2,4")
    if pipeline_frames < 1:
        fail(f"--pipeline-frames {pipeline_frames}: give at least 1")
    parsed_floors = [parse_floor(f) for f in floors or []]
    old = load_result(compare_to) if compare_to else None
    b = load_bundle(bundle)
    if not b.deployable:
        err_console.print(f"[yellow]warning:[/] {escape(str(b.path))} is not deployable (its export failed the "
                          "accuracy gate); benchmarking it anyway", highlight=False)
    opts = BenchOptions(backends=_csv(backends, "backends", ("tflite", "onnx")),
                        precisions=_csv(precision, "precision", ("int8", "fp16", "fp32")),
                        threads=thread_list, runs=runs, warmup=warmup, repeats=repeats, data=data, frames=frames,
                        pipeline=pipeline, pipeline_frames=pipeline_frames, baseline=baseline, keras_run=keras_run,
                        profile=profile)
    result = run_bench(b, opts, progress=_progress)

    # Piped into a file or a CI log, rich would fold the table at 80 columns: give it room there.
    # With --json - the JSON owns stdout: the tables go to stderr.
    to_stderr = json_path is not None and str(json_path) == "-"
    base = err_console if to_stderr else console
    show = base if base.is_terminal else Console(width=max(base.width, 130), stderr=to_stderr)
    show.print(rows_table(result))
    for line in footnotes(result):
        show.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if result.get("pipeline"):
        show.print(pipeline_table(result))
        show.print(f"  {pipeline_caption(result['pipeline'])}", highlight=False, markup=False, soft_wrap=True)
    if old is not None:
        cmp = compare(result, old)
        result["compare"] = {"old": str(compare_to), **cmp}
        show.print(compare_table(cmp))
        for line in cmp["unmatched"] + cmp["notes"]:
            show.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        if cmp["pipeline"]:
            show.print(f"  pipeline frames/s new/old: {_ratio(cmp['pipeline']['fps'])}"
                       + ("" if cmp["pipeline"]["same_setup"] else
                          " (not comparable as it stands: different model file, threads or frames)"),
                       highlight=False, soft_wrap=True)
    broken = check_floors(result, parsed_floors)
    result["floors"] = {"given": [f.text for f in parsed_floors], "broken": broken}
    saved = out or default_result_path()
    write_json(saved, result)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_tables(result) + "\n")
    show.print(f"results: {saved}", highlight=False, soft_wrap=True)
    write_json(json_path, result)
    if broken:
        print_error(f"{len(broken)} floor{'s' * (len(broken) > 1)} broken:")
        for line in broken:
            err_console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if parsed_floors:
        show.print(f"all {len(parsed_floors)} floor{'s' * (len(parsed_floors) > 1)} met: "
                   + ", ".join(f.text for f in parsed_floors), highlight=False, soft_wrap=True)


def _progress(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"
