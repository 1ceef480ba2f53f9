"""What a run leaves for people and for machines: the differential as JSON, CSV and an HTML page.

`write_outputs(run_dir, differential, meta)` writes, into a run folder made by
`record.Recorder`:
    differential.json   {"meta": ..., "differential": ..., "domain_shift": {"score", "threshold",
                        "alarm", "cells", ...}} (count.differential's dict; wbcedge.device.shift)
    differential.csv    one row per cell type, then the unidentified and total rows
    report.html         one page with no outside resources: the differential table with
                        intervals and flags, the run facts, and a gallery of the cell crops
                        grouped by type, least confident first (the cells worth a second look);
                        images are linked relatively (crops/...), so keep the folder together.
`format_differential(diff)` renders the same table for the terminal (rich).
Files are written to a temporary name and renamed, so a crash never leaves half a report.
Frames the run skipped are summed up in one line ("3 frames skipped: ..."), in the
HTML page and in the JSON. CSV cells that a spreadsheet would run as a formula
(starting with =, +, -, @, tab or carriage return) are prefixed with a quote.
`write_session_outputs(run_dir)` writes all three from the session database alone: `wbcedge run`
at the end of a session, the review station at sign-off, and `wbcedge report SESSION_DIR`
(`rebuild_outputs`, e.g. after a session was killed) all call it, so they write the same files.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from wbcedge.device.banner import banners, reference_cells
from wbcedge.device.records import (
    DB_FILE,
    CellRow,
    OutputError,
    SkippedRow,
    read_cells,
    read_frames,
    read_meta,
    read_skipped,
    read_warnings,
)
from wbcedge.device.shift import alarm_message
from wbcedge.imagefile import display_name
from wbcedge.jsonable import to_jsonable

JSON_FILE = "differential.json"
CSV_FILE = "differential.csv"
HTML_FILE = "report.html"
CSV_FIELDS = ("type", "count", "percent", "ci_low_percent", "ci_high_percent",
              "reference_low_percent", "reference_high_percent", "flag")
REVIEW_CSV_FIELDS = ("model_count", "model_percent", "agreed", "model_recall_percent")


def write_outputs(run_dir: Path | str, differential: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                  max_per_class: int = 200, review: Mapping[str, Any] | None = None,
                  reviewed_labels: Mapping[int, str] | None = None,
                  extra: Mapping[str, Any] | None = None,
                  domain_shift: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write differential.json, differential.csv and report.html into run_dir; returns their paths.

    The gallery shows at most `max_per_class` crops per type (the least confident ones).
    After a review sign-off (`review.store.ReviewStore.write_report`), `differential` is the
    reviewed one and `review` holds the sign-off, `model_differential` and `agreement`; the
    JSON gains a "review" key, the CSV the model's counts and the agreement, the page a
    review section, and the gallery groups cells by `reviewed_labels` (cell id -> label).
    `extra` keys are kept at the top level of the JSON (e.g. what an earlier write put there).
    """
    run_dir = Path(run_dir)
    meta = dict(meta or {})
    try:
        cells = read_cells(run_dir)
        skipped = read_skipped(run_dir)
        no_overlap = sum(1 for w in read_warnings(run_dir) if w.kind == "no-overlap")
    except FileNotFoundError:
        cells, skipped, no_overlap = [], [], 0  # a differential without a recorded run: no gallery
    if skipped:
        meta["skipped_frames"] = len(skipped)
        meta["skipped_summary"] = skipped_line(skipped)
    if no_overlap:
        meta["no_overlap_frames"] = no_overlap
    paths = {"json": run_dir / JSON_FILE, "csv": run_dir / CSV_FILE, "html": run_dir / HTML_FILE}
    model_labels = {c.id: c.label for c in cells} if reviewed_labels else {}
    if reviewed_labels:
        cells = [replace(c, label=reviewed_labels[c.id]) if c.id in reviewed_labels else c for c in cells]
    doc = {**dict(extra or {}), "meta": meta, "differential": differential}
    if review is not None:
        doc["review"] = review
    if domain_shift is not None:
        doc["domain_shift"] = dict(domain_shift)
        if domain_shift.get("alarm"):
            doc["domain_shift"]["message"] = alarm_message(domain_shift, reference_cells(meta))
    texts = {"json": json.dumps(doc, indent=2, default=to_jsonable) + "\n",
             "csv": differential_csv(differential, review),
             "html": render_html(run_dir, differential, meta, cells, max_per_class, review, model_labels,
                                 domain_shift)}
    for key, path in paths.items():
        try:
            _write_atomic(path, texts[key])
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}. The cells are safe in "
                              f"{run_dir / DB_FILE}; free some space and write the report again.") from exc
    return paths


def skipped_line(skipped: list[SkippedRow], examples: int = 3) -> str:
    """'3 frames skipped: a.png (empty file); b.png (...); ...' for the report and the terminal."""
    n = len(skipped)
    shown = "; ".join(f"{s.frame_name} ({s.reason})" for s in skipped[:examples])
    more = f"; and {n - examples} more (table skipped_frames in {DB_FILE})" if n > examples else ""
    return f"{n} frame{'s' * (n != 1)} skipped: {shown}{more}"


def write_session_outputs(run_dir: Path | str, reference: Mapping[str, Any] | None = None,
                          rebuilt: bool = False) -> dict[str, Path]:
    """differential.json/.csv and report.html of a session from its database: the one writer that
    `wbcedge run`, the review sign-off and `wbcedge report` share, so the files never depend on who wrote them.

    Everything comes from cells.db: the run facts (meta), the domain-shift result (meta
    `domain_shift`) and, once the session is signed off, the review (its reviewed differential,
    the model's and their agreement). `reference` defaults to the session's own ranges, else adult.
    `rebuilt` marks the files as written again later (`wbcedge report`).
    """
    from wbcedge.device.review.store import signed_off_review

    run_dir = Path(run_dir)
    meta = {**facts_of_earlier_files(run_dir), **read_meta(run_dir)}
    domain_shift = meta.pop("domain_shift", None)
    reference = reference if reference is not None else session_reference(meta)
    if rebuilt:
        if "finished_at" not in meta:
            meta.setdefault("stop_reason", "interrupted (no finished_at): rebuilt from the database")
        meta["rebuilt_from_database"] = True
    meta["frames"] = meta.get("frames") or len(read_frames(run_dir))
    review = signed_off_review(run_dir, reference)
    if review is None:   # the model's differential (and its class-mix bootstrap) only where it is the result
        return write_outputs(run_dir, model_differential(run_dir, meta, reference, domain_shift), meta,
                             domain_shift=domain_shift)
    reviewed_diff, review_block, reviewed_labels = review
    return write_outputs(run_dir, reviewed_diff, meta, review=review_block, reviewed_labels=reviewed_labels,
                         domain_shift=domain_shift)


def facts_of_earlier_files(run_dir: Path) -> dict[str, Any]:
    """The run facts and shift result of the session's differential.json, where it is readable: sessions
    recorded before cells.db kept them all (2026-12-02) have them only there, and a sign-off or `wbcedge
    report` must not drop them. What cells.db holds wins."""
    try:
        doc = json.loads((run_dir / "differential.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    earlier = dict(doc.get("meta") or {}) if isinstance(doc, dict) else {}
    earlier.pop("rebuilt_from_database", None)
    if isinstance(doc, dict) and doc.get("domain_shift") is not None:
        earlier["domain_shift"] = doc["domain_shift"]
    return earlier


def rebuild_outputs(run_dir: Path | str, reference: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """differential.json/.csv and report.html again, from the session database alone (an interrupted session too)."""
    return write_session_outputs(run_dir, reference, rebuilt=True)


def session_reference(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """The reference ranges the session was counted with (meta `reference`), else adult ranges."""
    from wbcedge.device.differential import ADULT_REFERENCE, load_reference

    ref_path = meta.get("reference")
    return load_reference(ref_path) if ref_path and Path(ref_path).is_file() else ADULT_REFERENCE


def model_differential(run_dir: Path, meta: Mapping[str, Any], reference: Mapping[str, Any],
                       domain_shift: Mapping[str, Any] | None) -> dict[str, Any]:
    """The differential of the model's labels in cells.db; flags withheld when the domain-shift alarm fired."""
    from wbcedge.device.differential import differential, withhold_flags
    from wbcedge.device.pipeline import UNIDENTIFIED
    from wbcedge.labels import CLASSES

    cells = read_cells(run_dir)
    labels = [c.label for c in cells]
    model_classes = list(meta.get("classes") or CLASSES)
    classes = model_classes + sorted(set(labels) - set(model_classes) - {UNIDENTIFIED})
    diff = differential(labels, classes, reference=reference)
    mix, note = session_class_mix(cells, model_classes, meta, domain_shift)
    diff = withhold_flags(diff) if (domain_shift or {}).get("alarm") else diff
    return {**diff, "class_mix": mix, **({"class_mix_note": note} if note else {})}


MIX_NO_PROBS = ("not available: this session's cells were recorded without their class probabilities "
                "(session schema 4 stores them; sessions recorded before it have none)")
MIX_FEW_CELLS = "not given: fewer than {n} cells (the interval would span most of 0-100%)"
MIX_SHIFTED = ("withheld: the domain-shift alarm fired, so the cells do not look as the model knows them and a "
               "re-estimate of the class mix would amplify its confusions (docs/runner.md)")
MIX_UNCALIBRATED = ("withheld: the bundle's confidences are not calibrated (no temperature fitted at export; an adapted "
                    "bundle needs 20 labelled validation cells), and the re-estimate of the class mix needs calibrated "
                    "probabilities (docs/runner.md)")


def session_class_mix(cells: list[CellRow], classes: list[str], meta: Mapping[str, Any],
                      domain_shift: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the differential for the sample's class mix, None) from `class_mix.mix_differential`, or (None,
    why not): no stored probabilities (sessions before schema 4), a shift alarm, a bundle without
    calibrated confidences, or too few cells. The estimate assumes calibrated probabilities and that only
    the mix changed, not how each type looks."""
    from wbcedge.device.class_mix import MIN_CELLS, mix_differential

    probs = [c.probs for c in cells]
    if any(p is None or len(p) != len(classes) for p in probs):
        return None, MIX_NO_PROBS
    if (domain_shift or {}).get("alarm"):
        return None, MIX_SHIFTED
    if not (meta.get("calibration") or {}).get("fitted_on"):
        return None, MIX_UNCALIBRATED
    mix = mix_differential(np.asarray(probs).reshape(len(probs), len(classes)), classes, level=0.95)
    return (mix, None) if mix else (None, MIX_FEW_CELLS.format(n=MIN_CELLS))   # None: fewer than MIN_CELLS


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ tab or CR gets a leading quote (OWASP)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def differential_csv(diff: Mapping[str, Any], review: Mapping[str, Any] | None = None) -> str:
    """One row per type; after a review sign-off `diff` is the reviewed differential and the rows gain the
    model's count and percent, the cells both agreed on and the model's recall against the reviewer,
    with a final cohen_kappa row."""
    buf = io.StringIO()
    writer = _SafeWriter(csv.writer(buf, lineterminator="\n"))
    model = review["model_differential"] if review else None
    per = review["agreement"]["per_label"] if review else {}
    writer.writerow(CSV_FIELDS + (REVIEW_CSV_FIELDS if review else ()))

    def review_cols(label: str, model_count: Any, model_percent: Any) -> list:
        if not review:
            return []
        a = per.get(label, {})
        return [model_count, model_percent, a.get("agreed", ""), _num(_times100(a.get("recall")), 2)]

    for cls in diff["classes"]:
        t = diff["types"][cls]
        m = model["types"][cls] if model else {}
        writer.writerow([cls, t["count"], _num(t["percent"], 2), _num(t["ci_low"], 2), _num(t["ci_high"], 2),
                         _num(t["reference_low"], 1), _num(t["reference_high"], 1), t["flag"]]
                        + review_cols(cls, m.get("count"), _num(m.get("percent"), 2)))
    ulabel = diff.get("unidentified_label", "unidentified")
    writer.writerow([ulabel, diff["unidentified"], "", "", "", "", "", "excluded from percentages"]
                    + review_cols(ulabel, model["unidentified"] if model else "", ""))
    writer.writerow(["classified_total", diff["classified"], _num(100.0 if diff["classified"] else None, 2),
                     "", "", "", "", ""] + review_cols("", model["classified"] if model else "", ""))
    if review:
        kappa = review["agreement"]["cohen_kappa"]
        writer.writerow(["artefact", review["artefacts"], "", "", "", "", "", "not a white cell (reviewer)"]
                        + review_cols("artefact", 0, ""))
        writer.writerow(["cohen_kappa", _num(kappa, 4), "", "", "", "", "",
                         f"model against reviewer {review['signoff']['reviewer']}, {review['agreement']['cells']} cells"]
                        + ["", "", "", ""])
    return buf.getvalue()


def _times100(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


class _SafeWriter:
    def __init__(self, writer):
        self._writer = writer

    def writerow(self, row) -> None:
        # A bare CR inside a cell would start a new row for most readers: it becomes a space after the check.
        self._writer.writerow([csv_safe(display_name(v)).replace("\r", " ").replace("\n", " ")
                               if isinstance(v, str) else v for v in row])


def format_differential(diff: Mapping[str, Any]) -> Table:
    """The differential as a rich table for the terminal."""
    level = diff.get("level", 0.95)
    table = Table(title="White cell differential", caption=_caption(diff))
    table.add_column("Type")
    table.add_column("Count", justify="right")
    table.add_column("%", justify="right")
    table.add_column(f"{level * 100:g}% CI", justify="right")
    table.add_column("Reference %", justify="right")
    table.add_column("Flag")
    mix = diff.get("class_mix")
    if mix:
        table.add_column(MIX_HEADER, justify="right")
    for cls in diff["classes"]:
        t = diff["types"][cls]
        flag = t["flag"]
        style = {"low": "bold yellow", "high": "bold red"}.get(flag, "")
        table.add_row(escape(cls), str(t["count"]), _pct(t["percent"]), _ci(t), _ref(t),
                      f"[{style}]{flag.upper()}[/]" if flag else "", *([_mix(mix, cls)] if mix else []))
    table.add_section()
    blank = [""] * (4 + bool(mix))
    table.add_row("classified", str(diff["classified"]), "100.0" if diff["classified"] else "—", *blank[1:])
    table.add_row(f"{escape(diff.get('unidentified_label', 'unidentified'))} (excluded)", str(diff["unidentified"]),
                  *blank)
    return table


MIX_HEADER = "% for this sample's mix (95% CI)"
MIX_NOTE = ("The last column re-estimates the shares from every cell's probabilities for this sample's class mix "
            "(EM; unidentified cells included): the model was trained on an even mix and over-counts rare types "
            "when it counts each cell's top class. It cannot correct a model that confuses two types on this "
            "microscope (docs/runner.md).")


def _mix(mix: Mapping[str, Any], cls: str) -> str:
    t = (mix.get("types") or {}).get(cls)
    return "" if t is None else f"{t['percent']:.1f} ({t['ci_low']:.1f}-{t['ci_high']:.1f})"


def _caption(diff: Mapping[str, Any]) -> str:
    n = diff["classified"]
    if n == 0:
        return "No cell was classified: no percentages."
    text = f"Percent of {n} classified cells; Clopper-Pearson exact interval."
    if diff.get("class_mix"):
        text += " Last column: the shares for this sample's class mix (EM over all cells; docs/runner.md)."
    if n < 100:
        text += " Fewer than 100 cells: intervals are wide; count more fields."
    if diff.get("flag_basis", "").startswith("withheld"):
        text += " Flags withheld: domain-shift alarm."
    return text


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:.3rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.low{color:#a15c00;font-weight:bold}.high{color:#b00020;font-weight:bold}.muted{color:#777}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem}
.banner{background:#fdecea;border:2px solid #b00020;color:#5f0010;font-weight:bold;padding:.7rem 1rem}
td table{margin:0}td table td{border:none;padding:.1rem .5rem .1rem 0;text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:.5rem}
figure{margin:0;width:132px;font-size:.75rem;text-align:center}
figure img{width:128px;height:128px;object-fit:contain;background:#eee;border:1px solid #ccc}
.missing{display:flex;align-items:center;justify-content:center;width:128px;height:128px;background:#eee;color:#777}
"""


def render_html(run_dir: Path, diff: Mapping[str, Any], meta: Mapping[str, Any], cells: list[CellRow],
                max_per_class: int = 200, review: Mapping[str, Any] | None = None,
                model_labels: Mapping[int, str] | None = None, domain_shift: Mapping[str, Any] | None = None) -> str:
    e = html.escape
    level = diff.get("level", 0.95)
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             "<title>White cell differential</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>White cell differential</h1>"]
    for notice in banners({**meta, "domain_shift": domain_shift} if domain_shift else meta, diff):
        parts.append(f"<p class=\"banner\" role=\"alert\">{e(notice)}</p>")
    parts.append(_shift_html(domain_shift))
    if review:
        s = review["signoff"]
        parts.append(f"<p class=\"note\">Reviewed and signed off by <b>{e(s['reviewer'])}</b> at "
                     f"{e(s.get('time_text', ''))}: the table shows the reviewed labels; the model's are "
                     f"under <a href=\"#review\">Review</a>.</p>")
    parts.append(f"<p>{e(_caption(diff))}</p>")
    if diff["classified"] and diff["classified"] < 100:
        parts.append("<p class=\"note\">A differential is usually based on at least 100 white cells.</p>")
    if meta.get("skipped_summary"):
        parts.append(f"<p class=\"note\">{e(display_name(str(meta['skipped_summary'])))}</p>")
    if meta.get("no_overlap_frames"):
        parts.append(f"<p class=\"note\">{meta['no_overlap_frames']} stream frame(s) shared no overlap with the one "
                     "before: cells could not be matched across them, so some may be counted twice or missed.</p>")

    mix = diff.get("class_mix")
    parts.append("<table><thead><tr><th>Type</th><th>Count</th><th>%</th>"
                 f"<th>{level * 100:g}% CI</th><th>Reference %</th><th>Flag</th>"
                 + (f"<th>{e(MIX_HEADER)}</th>" if mix else "") + "</tr></thead><tbody>")
    for cls in diff["classes"]:
        t = diff["types"][cls]
        flag = t["flag"]
        parts.append(f"<tr><td>{e(cls)}</td><td>{t['count']}</td><td>{_pct(t['percent'])}</td>"
                     f"<td>{e(_ci(t))}</td><td>{e(_ref(t))}</td>"
                     f"<td class=\"{e(flag)}\">{e(flag.upper())}</td>"
                     + (f"<td>{e(_mix(mix, cls))}</td>" if mix else "") + "</tr>")
    empty = "<td></td>" * bool(mix)
    parts.append(f"<tr><th>classified</th><th>{diff['classified']}</th>"
                 f"<th>{'100.0' if diff['classified'] else '—'}</th><th></th><th></th><th></th>{empty}</tr>")
    ulabel = diff.get("unidentified_label", "unidentified")
    parts.append(f"<tr><td>{e(ulabel)} <span class=\"muted\">(not in the percentages)</span></td>"
                 f"<td>{diff['unidentified']}</td><td></td><td></td><td></td><td></td>{empty}</tr>")
    parts.append("</tbody></table>")
    if mix:
        parts.append(f"<p class=\"muted\">{e(MIX_NOTE)}</p>")
    elif diff.get("class_mix_note"):
        parts.append(f"<p class=\"muted\">The shares for this sample's class mix are {e(diff['class_mix_note'])}.</p>")
    parts.append("<p class=\"muted\">Flags compare the percent with the reference range; "
                 "read them together with the interval. Reference ranges differ between laboratories.</p>")

    if review:
        parts.extend(_review_html(review))

    if meta:
        parts.append("<h2>Run</h2><table><tbody>")
        for key, value in meta.items():
            parts.append(f"<tr><td>{e(display_name(str(key)))}</td><td style=\"text-align:left\">{_html_value(value)}</td></tr>")
        parts.append("</tbody></table>")

    parts.append("<h2>Cells</h2>")
    if not cells:
        parts.append("<p class=\"muted\">No cell crops were recorded.</p>")
    by_label: dict[str, list[CellRow]] = defaultdict(list)
    for c in cells:
        by_label[c.label].append(c)
    order = [c for c in diff["classes"] if c in by_label] + [ulabel] * (ulabel in by_label)
    order += sorted(set(by_label) - set(order))
    for label in order:
        group = sorted(by_label[label], key=lambda c: (c.confidence, c.id))
        shown = group[:max_per_class]
        more = f", showing the {len(shown)} least confident" if len(group) > len(shown) else ""
        parts.append(f"<h3 id=\"{e(label)}\">{e(label)} — {len(group)} cell{'s' * (len(group) != 1)}"
                     f"{more} (least confident first)</h3><div class=\"gallery\">")
        for c in shown:
            caption = f"{c.confidence:.2f} · {display_name(c.frame_name)}"
            was = (model_labels or {}).get(c.id)
            if was and was != c.label:
                caption += f" · model: {was}"
            if c.ood_score is not None:
                caption += f" · shift {c.ood_score:.2f}"
            if c.crop_path and (run_dir / c.crop_path).is_file():
                img = (f"<img src=\"{e(c.crop_path, quote=True)}\" loading=\"lazy\" "
                       f"alt=\"{e(label)} {c.confidence:.2f}\">")
            else:
                img = "<div class=\"missing\">no crop</div>"
            parts.append(f"<figure>{img}<figcaption>{e(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _review_html(review: Mapping[str, Any]) -> list[str]:
    e = html.escape
    a = review["agreement"]
    model = review["model_differential"]
    kappa = a["cohen_kappa"]
    pa = "" if a["percent_agreement"] is None else f" ({a['percent_agreement']:.1f}%)"
    parts = ["<h2 id=\"review\">Review</h2>",
             f"<p>{review['reviewed_cells']} of {review['total_cells']} cells reviewed; {review['artefacts']} "
             f"called not a white cell (left out). Model and reviewer agree on {a['agreed']} of {a['cells']} cells{pa}; "
             f"Cohen's kappa {'—' if kappa is None else f'{kappa:.3f}'}.</p>",
             "<table><thead><tr><th>Type</th><th>Reviewed</th><th>Model</th><th>Model %</th><th>Agreed</th>"
             "<th>Model recall %</th><th>Model precision %</th></tr></thead><tbody>"]
    for label, p in a["per_label"].items():
        mt = model["types"].get(label)
        parts.append(f"<tr><td>{e(label)}</td><td>{p['reviewed']}</td><td>{p['model']}</td>"
                     f"<td>{_pct(mt['percent']) if mt else ''}</td><td>{p['agreed']}</td>"
                     f"<td>{_pct(_times100(p['recall']))}</td><td>{_pct(_times100(p['precision']))}</td></tr>")
    parts.append("</tbody></table>")
    return parts


# ---------------------------------------------------------------- helpers

def _html_value(value: Any) -> str:
    """A run fact as people read it: nested tables for dicts (e.g. timing), numbers rounded, never raw JSON."""
    e = html.escape
    if isinstance(value, Mapping):
        if not value:
            return "—"
        rows = "".join(f"<tr><td>{e(str(k))}</td><td>{_html_value(v)}</td></tr>" for k, v in value.items())
        return f"<table><tbody>{rows}</tbody></table>"
    if isinstance(value, (list, tuple)):
        return e(display_name(", ".join(_plain(v) for v in value))) or "—"
    return e(display_name(_plain(value)))


def _plain(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, (str, int)):
        return str(value)
    return json.dumps(value, default=to_jsonable)


def _shift_html(state: Mapping[str, Any] | None) -> str:
    """The domain-shift line under the banners when no alarm fired: off, too few cells, or no alarm."""
    e = html.escape
    if state is None:
        return ""
    if state.get("alarm"):
        return ""  # the banner at the top says it (wbcedge.device.banner)
    if state.get("alarm") is None:
        return f"<p class=\"note\" id=\"domain-shift\">{e(state.get('note', 'The domain-shift check is off.'))}</p>"
    if not state.get("judged", True):
        return (f"<p class=\"muted\" id=\"domain-shift\">Domain-shift check: {state['cells']} cells, too few to judge "
                f"(at least {state.get('min_cells')}).</p>")
    return (f"<p class=\"muted\" id=\"domain-shift\">Domain-shift check: no alarm (score {state['score']:.2f}, "
            f"threshold {state['threshold']:.2f}, {state['cells']} cells): the cells look like the training data.</p>")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _ci(t: Mapping[str, Any]) -> str:
    if t["ci_low"] is None:
        return "—"
    return f"{t['ci_low']:.1f}–{t['ci_high']:.1f}"


def _ref(t: Mapping[str, Any]) -> str:
    if t["reference_low"] is None:
        return ""
    return f"{t['reference_low']:g}–{t['reference_high']:g}"


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
