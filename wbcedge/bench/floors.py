"""Floors for `wbcedge bench --floor`: bounds a benchmark result must meet, e.g. `fps=30` or `tflite/int8:p99_ms<=8`.

    floors = [parse_floor("fps=30"), parse_floor("tflite/int8:p50_ms<=5")]
    broken = check_floors(result, floors)   # one sentence per broken floor and row

A floor that no row could be checked against (nothing matches its selector, no
baseline for `speedup`, no accuracy measured) counts as broken, so CI never passes
on a figure that was not measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wbcedge.bench import BenchError

# metric -> (where it lives, row key, the good direction, how a value is read from the command line)
METRICS: dict[str, tuple[str, str, str]] = {
    "p50_ms": ("row", "p50_ms", "<="), "p90_ms": ("row", "p90_ms", "<="), "p99_ms": ("row", "p99_ms", "<="),
    "first_ms": ("row", "first_ms", "<="), "load_ms": ("row", "load_ms", "<="),
    "rss_mb": ("row", "rss_peak_mb", "<="), "size_mb": ("row", "size_mb", "<="),
    "spread_pct": ("row", "spread_pct", "<="),
    "throughput": ("row", "throughput_per_s", ">="), "speedup": ("row", "speedup", ">="),
    "accuracy": ("row", "accuracy", ">="),          # in percent on the command line
    "fps": ("pipeline", "fps", ">="), "stage_gap_pct": ("pipeline", "stage_gap_pct", "<="),
}
FLOOR_SYNTAX = ("[BACKEND[/PRECISION[/THREADS]]:]METRIC(>=|<=|=)VALUE, e.g. fps=30, speedup=10, p50_ms<=5, "
                "tflite/int8/2:p50_ms<=3; '=' means 'at least' for fps, throughput, speedup and accuracy (percent) "
                "and 'at most' for *_ms, rss_mb, size_mb, spread_pct and stage_gap_pct; '*' matches anything")
_FLOOR_RE = re.compile(r"^\s*(?:(?P<sel>[A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+){0,2})\s*:)?\s*"
                       r"(?P<metric>[a-z0-9_]+)\s*(?P<op>>=|<=|=)\s*(?P<value>[-+0-9.eE]+)\s*%?\s*$")


@dataclass(frozen=True)
class Floor:
    text: str
    metric: str
    op: str               # ">=" or "<="
    value: float
    selector: tuple[str, ...] = ()   # (backend, precision, threads) prefix; "*" = any

    def matches(self, row: dict) -> bool:
        keys = (row.get("backend"), row.get("precision"), str(row.get("threads")))
        return all(s == "*" or s == k for s, k in zip(self.selector, keys))

    def broken_by(self, value: float) -> bool:
        return value < self.value if self.op == ">=" else value > self.value


def parse_floor(text: str) -> Floor:
    m = _FLOOR_RE.match(text)
    if not m:
        raise BenchError(f"--floor {text!r} is not understood; the form is {FLOOR_SYNTAX}")
    metric = m["metric"]
    if metric not in METRICS:
        raise BenchError(f"--floor {text!r}: unknown metric '{metric}'; known: {', '.join(METRICS)}")
    try:
        value = float(m["value"])
    except ValueError:
        raise BenchError(f"--floor {text!r}: '{m['value']}' is not a number") from None
    op = METRICS[metric][2] if m["op"] == "=" else m["op"]
    selector = tuple(m["sel"].split("/")) if m["sel"] else ()
    return Floor(text.strip(), metric, op, value, selector)


def row_label(row: dict) -> str:
    threads = row.get("threads")
    return f"{row['backend']}/{row['precision']}" + (f"/{threads}" if threads is not None else "")


def check_floors(result: dict, floors: list[Floor]) -> list[str]:
    """One sentence per broken floor and row; a floor that no row could be checked against counts as broken."""
    broken = []
    for f in floors:
        where, key, _ = METRICS[f.metric]
        rows = [result["pipeline"]] if where == "pipeline" and result.get("pipeline") else \
            (result["rows"] if where == "row" else [])
        rows = [r for r in rows if f.matches(r)]
        checked = 0
        for r in rows:
            value = r.get(key)
            if value is None:
                continue
            checked += 1
            shown = 100 * value if f.metric == "accuracy" else value
            if f.broken_by(shown):
                broken.append(f"{row_label(r)}{' pipeline' if where == 'pipeline' else ''}: "
                              f"{f.metric} = {shown:.4g}, floor {f.metric} {f.op} {f.value:g} (from --floor {f.text})")
        if checked == 0:
            if not rows:
                if where == "pipeline" and not result.get("pipeline"):
                    why = "the pipeline was not run (--no-pipeline)"
                elif f.selector:
                    why = f"nothing benchmarked matches {'/'.join(f.selector)}"
                else:
                    why = "nothing was benchmarked"
            else:
                why = {"speedup": "no Keras baseline was measured (see the notes for why)",
                       "accuracy": "no accuracy was measured (give --data) nor found in the bundle's export report",
                       }.get(f.metric, f"no row has a {f.metric} figure")
            broken.append(f"--floor {f.text} could not be checked: {why}")
    return broken
