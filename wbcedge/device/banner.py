"""The notice that makes a demonstration impossible to mistake for a result.

`wbcedge run` on the built-in frames counts cells from BCCD, another microscope than the
one the default model was trained on; the model's measured accuracy on such frames is low
(docs/model-card.md). `banners(meta, differential)` returns the sentences to show at the
top of the terminal output and of report.html:
- a demonstration notice when the session ran on the built-in frames, and
- a shift notice whenever a domain-shift alarm fired (`domain_shift.alarm` true in the
  session's meta or differential).
The accuracy figure is read from the bundle's manifest (`other_microscope_check`, written
with its source), copied into the session's meta by `count_cells`; never from code. So is
the manifest's `adaptation` block: the notices then compare with the microscope the model
was adapted to, not with its original training data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wbcedge.device.shift import alarm_message

CHECK_KEY = "other_microscope_check"
ADAPTATION_KEY = "adaptation"
"""A bundle made by `wbcedge adapt` has this manifest block: its model knows the site's cells."""


def other_microscope_sentence(check: Mapping[str, Any] | None) -> str:
    """'measured on 342 cells from another microscope (BCCD: ...), the model classified 21.3% correctly (...)'."""
    if not check or check.get("cell_accuracy") is None:
        return ("this model's accuracy on another microscope was not measured (its bundle records no "
                f"'{CHECK_KEY}'): do not read the percentages as a result")
    lo, hi = check.get("cell_accuracy_ci95") or (None, None)
    interval = f"95% CI {100 * lo:.1f}-{100 * hi:.1f}" if lo is not None else "no interval recorded"
    where = f"; {check['source']}" if check.get("source") else ""
    return (f"measured on {check.get('cells', '?')} cells from another microscope "
            f"({check.get('checked_on', 'not its training data')}), the model classified "
            f"{100 * check['cell_accuracy']:.1f}% correctly ({interval}{where})")


def adapted_sentence(adaptation: Mapping[str, Any]) -> str:
    """'on the 276 held-out cells of the microscope it was adapted to, the model classified 74.3% correctly
    (its parent 51.8%)', from the manifest's `adaptation` block (written by `wbcedge adapt`)."""
    accuracy = adaptation.get("held_out_accuracy") or {}
    if accuracy.get("adapted_int8") is None:
        return "this adapted model's accuracy on its own microscope is not recorded in its bundle"
    counts = adaptation.get("site_counts") or {}
    n = sum(int(c.get("held_out", 0)) for c in counts.values()) if counts else None
    cells = f"the {n} held-out cells" if n else "the held-out cells"
    parent = f" (its parent {100 * accuracy['parent']:.1f}%)" if accuracy.get("parent") is not None else ""
    return (f"on {cells} of the microscope it was adapted to, the model classified "
            f"{100 * accuracy['adapted_int8']:.1f}% correctly{parent}")


def accuracy_sentence(meta: Mapping[str, Any]) -> str:
    """What is known of this model's accuracy away from its training data: its site's held-out cells for
    an adapted bundle, else the other microscope its bundle was checked on."""
    if meta.get(ADAPTATION_KEY):
        return adapted_sentence(meta[ADAPTATION_KEY])
    return other_microscope_sentence(meta.get(CHECK_KEY))


def shift_state(meta: Mapping[str, Any], differential: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The session's "domain_shift" state when its alarm fired, else None."""
    for source in (meta, differential or {}):
        shift = source.get("domain_shift") if isinstance(source, Mapping) else None
        if isinstance(shift, Mapping) and shift.get("alarm"):
            return shift
    return None


def shift_alarm(meta: Mapping[str, Any], differential: Mapping[str, Any] | None = None) -> bool:
    return shift_state(meta, differential) is not None


def reference_cells(meta: Mapping[str, Any]) -> str:
    """The cells this model knows, in words: the site's cells for an adapted bundle, else its training data."""
    if meta.get(ADAPTATION_KEY):
        return "the cells of the microscope this model was adapted to"
    trained_on = (meta.get(CHECK_KEY) or {}).get("trained_on")
    return f"the model's training data ({trained_on})" if trained_on else "the model's training data"


def demo_origin(meta: Mapping[str, Any]) -> str:
    """Where the built-in frames come from, against the cells this model knows."""
    if meta.get(ADAPTATION_KEY):
        # the site may be any microscope, BCCD's own among them (docs/adapt.md adapts to it): say what is sure
        return "public BCCD images, not your own slides"
    return f"from another microscope than {reference_cells(meta)}"


def banners(meta: Mapping[str, Any], differential: Mapping[str, Any] | None = None) -> list[str]:
    """The notices for this session, most important first; empty for an ordinary run."""
    out = []
    if meta.get("builtin_samples"):
        out.append(f"DEMONSTRATION, not a result: these are the built-in sample frames, {demo_origin(meta)}. "
                   f"{_first_upper(accuracy_sentence(meta))}. "
                   f"Count your own slides with --source or --camera, and check the model on your microscope first.")
    shift = shift_state(meta, differential)
    if shift is not None:
        out.append(alarm_message(shift, reference_cells(meta)) if shift.get("score") is not None else
                   f"DOMAIN SHIFT: these images look unlike {reference_cells(meta)}; "
                   f"{accuracy_sentence(meta)}. Check the model with labelled cells from this "
                   f"microscope before trusting this differential.")
    return out


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]
