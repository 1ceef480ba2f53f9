"""`wbcedge evaluate --frames` with YOLO labels (`class cx cy w h`, normalised), generated from the VOC samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wbcedge.cli import app
from wbcedge.evaluation.locate_eval import evaluate_localization, read_voc_boxes, read_yolo_boxes, yolo_class_ids
from wbcedge.preprocess import read_image

REPO = Path(__file__).resolve().parent.parent
FRAMES = REPO / "wbcedge" / "samples" / "frames"
CLASSES = ["RBC", "WBC", "Platelets"]


def _yolo_copy(root: Path, names_file: str | None = "classes.txt") -> Path:
    """The sample frames in the Ultralytics layout (images/, labels/) with every VOC object as a YOLO line."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for frame in sorted(FRAMES.glob("*.jpg")):
        shutil.copy(frame, root / "images" / frame.name)
        h, w = read_image(frame).shape[:2]
        lines = []
        for cls, name in enumerate(CLASSES):
            for x0, y0, x1, y1 in read_voc_boxes(FRAMES / "annotations" / f"{frame.stem}.xml", name):
                lines.append(f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                             f"{(y1 - y0) / h:.6f}")
        (root / "labels" / f"{frame.stem}.txt").write_text("\n".join(lines) + "\n")
    if names_file == "classes.txt":
        (root / "labels" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    elif names_file == "data.yaml":
        (root / "data.yaml").write_text("path: .\ntrain: images\nnames:\n  0: RBC\n  1: WBC\n  2: Platelets\n")
    return root


def test_yolo_boxes_match_the_voc_boxes_they_were_made_from(tmp_path: Path) -> None:
    root = _yolo_copy(tmp_path / "set")
    assert yolo_class_ids(root / "labels", "WBC") == {1}
    for frame in sorted(FRAMES.glob("*.jpg")):
        h, w = read_image(frame).shape[:2]
        yolo = read_yolo_boxes(root / "labels" / f"{frame.stem}.txt", w, h, {1})
        voc = read_voc_boxes(FRAMES / "annotations" / f"{frame.stem}.xml")
        assert len(yolo) == len(voc)
        for a, b in zip(sorted(yolo), sorted(voc)):
            assert max(abs(p - q) for p, q in zip(a, b)) <= 1


def test_localization_on_yolo_labels_equals_voc(tmp_path: Path) -> None:
    voc = evaluate_localization(FRAMES, FRAMES / "annotations")
    for names_file in ("classes.txt", "data.yaml"):
        root = _yolo_copy(tmp_path / names_file, names_file)
        yolo = evaluate_localization(root / "images", root / "labels")
        for key in ("n_frames", "n_gt", "true_positives", "false_positives", "recall"):
            assert yolo[key] == voc[key], (names_file, key)
    # Without a names file every box counts, red cells too.
    bare_root = _yolo_copy(tmp_path / "bare", None)
    bare = evaluate_localization(bare_root / "images", bare_root / "labels")
    assert bare["n_gt"] > voc["n_gt"]


def test_cli_reads_a_yolo_folder(tmp_path: Path) -> None:
    root = _yolo_copy(tmp_path / "set")
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["evaluate", "--frames", str(root), "--json", str(out)])
    assert result.exit_code == 0, result.output
    loc = json.loads(out.read_text())["localization"]
    assert loc["n_gt"] == 7 and loc["recall"] == 1.0


def test_a_bad_yolo_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("1 0.5 0.5 0.2 0.2\n\n1 0.5 oops 0.2\n")
    with pytest.raises(ValueError, match=r"x.txt:3"):
        read_yolo_boxes(bad, 640, 480)
