"""`wbcedge evaluate`: accuracy with intervals, Table VI, plots; McNemar between two models; localization on frames."""

from __future__ import annotations

from pathlib import Path

import typer

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, err_console, examples, fail, write_json
from wbcedge.data.manifest import SPLITS
from wbcedge.errors import InputFileMissingError


@app.command("evaluate", rich_help_panel="On the training box", epilog=examples(
        "wbcedge evaluate training/runs/default-edge --data training/pbc_split.csv",
        "wbcedge evaluate wbcedge/default_bundle --data training/pbc_split.csv --backend onnx --precision int8",
        "wbcedge evaluate --frames ../shared/data/bccd        # the cell locator on annotated frames"))
def evaluate_cmd(
    model: Path = typer.Argument(None, help="A run folder or a bundle (folder or .tar.gz)."),
    data: Path = typer.Option(None, "--data", help="A split manifest (its test split is used) or a class-folder tree "
                                                "(default: none: give it, or --frames)."),
    split: str = typer.Option("test", "--split", help="Which split of a manifest to use."),
    out: Path = typer.Option(None, "--out", "-o", help="Report folder (default: MODEL/eval-<split>)."),
    compare: Path = typer.Option(None, "--compare", help="A second model: McNemar test on the same images (default: none)."),
    backend: str = typer.Option(None, "--backend", help="For a bundle: tflite or onnx (default: the bundle's)."),
    precision: str = typer.Option(None, "--precision", help="For a bundle: int8 or fp32 (default: the bundle's)."),
    frames: Path = typer.Option(None, "--frames", help="Evaluate white-cell localization on annotated frames instead "
                                "(VOC .xml or YOLO .txt labels; default: none: classify crops)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Evaluate a model on held-out crops (or the cell locator on annotated frames)."""
    if frames is not None:
        return _evaluate_frames(frames, model, json_path)
    if model is None or data is None:
        fail("give MODEL and --data (a manifest or a class-folder tree), or --frames DIR for the locator")
    if split not in SPLITS:
        fail(f"--split {split!r}: a manifest's splits are {', '.join(SPLITS[:-1])} and {SPLITS[-1]}")
    if data.is_dir() and split != "test":
        fail(f"--split {split} applies to a manifest; {data} is a class-folder tree, which is scored whole "
             "(make a manifest with `wbcedge data index` and `wbcedge data split` to score one part)")
    from wbcedge.data import load_labelled
    from wbcedge.evaluation import metrics
    from wbcedge.evaluation.evaluate import predict_records, predict_records_report
    from wbcedge.train.run_folder import open_model

    # Both models open first: a mistyped --compare fails in a second, not after indexing and scoring every crop.
    predictor = open_model(model, backend, precision)
    other = None if compare is None else open_model(compare, backend, precision)
    loaded = load_labelled(data, split if data.is_file() else None)
    records, skipped = loaded.records, loaded.unreadable
    _warn_skipped(skipped)
    y_true, probs, crops = predict_records_report(predictor, records)
    results = metrics.classification_results(y_true, probs, predictor.classes)
    results["model"], results["data"], results["split"] = str(model), str(data), split
    results["crops"] = crops
    results["skipped_files"] = [{"path": p.path, "why": p.what} for p in skipped]
    median = "-" if crops["median_fraction"] is None else f"{crops['median_fraction']:.2f}"
    console.print(f"crops: located cell / crop side median {median} over {crops['measured']} crops "
                  f"(trained: {predictor.spec.cell_fraction}); "
                  + ("used as given" if crops["factor"] == 1.0 else f"every crop re-cut x{crops['factor']:.2f}")
                  + f"; no cell found in {len(crops['no_cell'])}"
                  + (": " + ", ".join(Path(p).name for p in crops["no_cell"][:10])
                     + (" ..." if len(crops["no_cell"]) > 10 else "") if crops["no_cell"] else ""),
                  markup=False, highlight=False)
    console.print(metrics.format_table(results, title=f"{model.name} on {data.name} ({len(records)} images"
                                            + (f", {len(skipped)} unreadable skipped)" if skipped else ")")))
    if other is not None:
        _, probs_b = predict_records(other, records)
        results_b = metrics.classification_results(y_true, probs_b, other.classes)
        test = metrics.mcnemar(y_true, probs, probs_b, names=(str(model), str(compare)))
        console.print(metrics.compare_markdown(results, results_b, test, names=(str(model), str(compare))))
        write_json(json_path, {"a": results, "b": results_b, "mcnemar": test})
        return
    history = model / "history.csv"
    # A run folder keeps its reports; a bundle must stay exactly as exported (it is hashed).
    folder = out or (model / f"eval-{split}" if (model / "model.keras").is_file()
                     else Path("runs") / f"eval-{model.name}-{split}")
    calibrated = _bundle_calibrated(model, probs)
    paths = metrics.write_report(folder, results, y_true, probs, predictor.classes,
                                 title=f"{model.name} ({predictor.name}) on {data.name}, {split} split",
                                 history_csv=history if history.is_file() else None, calibrated=calibrated)
    ece = f"expected calibration error {100 * results['ece']:.2f}%"
    if calibrated is not None:
        ece += f", {100 * results['ece_calibrated']:.2f}% with the bundle's temperature"
    console.print(ece + f" (reliability diagram: {paths['reliability']})", markup=False, highlight=False)
    console.print(f"report: {paths['markdown']}  (JSON, confusion, ROC" + (", curves" if "curves" in paths else "") + " beside it)")
    write_json(json_path, results)


def _warn_skipped(skipped: list, shown: int = 5) -> None:
    """One warning line for the image files the class-folder index could not use, naming the first few."""
    if not skipped:
        return
    names = "; ".join(f"{p.path} ({p.what})" for p in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    err_console.print(f"warning: {len(skipped)} image file(s) could not be used and are left out of the "
                      f"evaluation: {names}{more}", markup=False, highlight=False)


def _bundle_calibrated(model: Path, probs):
    """The probabilities after a bundle's temperature (what the device uses); None for a run folder or T = 1."""
    from wbcedge.bundle import load_bundle
    from wbcedge.device.confidence import apply_temperature

    if (model / "model.keras").is_file():
        return None
    temperature = load_bundle(model).temperature
    return None if temperature == 1.0 else apply_temperature(probs, temperature)


def _evaluate_frames(frames: Path, model: Path | None, json_path: Path | None) -> None:
    from rich.table import Table

    from wbcedge.evaluation.locate_eval import evaluate_localization

    frames = Path(frames)
    if not frames.is_dir():
        raise InputFileMissingError(f"--frames {frames}: " + ("not a folder" if frames.exists() else "no such folder")
                                    + "; give the folder of annotated frames (VOC JPEGImages/ + Annotations/, "
                                    "or YOLO images/ + labels/)")
    # VOC (JPEGImages/ + Annotations/), Ultralytics YOLO (images/ + labels/), or frames with an
    # annotations/ or labels/ folder, or with their .xml/.txt files beside them.
    layouts = [("JPEGImages", "Annotations"), ("images", "labels"), (".", "Annotations"), (".", "annotations"),
               (".", "labels"), (".", ".")]
    for image_dir, label_dir in layouts:
        images, annotations = frames / image_dir, frames / label_dir
        if images.is_dir() and annotations.is_dir() and (any(annotations.glob("*.xml"))
                                                          or any(p.stem != "classes" for p in annotations.glob("*.txt"))):
            break
    else:
        fail(f"no annotations found for {frames}: expected VOC ({frames}/JPEGImages + Annotations/*.xml) or YOLO "
             f"({frames}/images + labels/*.txt, 'class cx cy w h' normalised), or .xml/.txt files beside the frames")
    res = evaluate_localization(images, annotations)
    table = Table(title=f"White-cell localization on {frames} (IoU >= 0.5)")
    for col in ("frames", "boxes", "found", "recall", "precision", "extra boxes", "ms/frame"):
        table.add_column(col, justify="right")
    table.add_row(str(res["n_frames"]), str(res["n_gt"]), str(res["true_positives"]), f"{100 * res['recall']:.1f}%",
                  f"{100 * res['precision']:.1f}%", f"{100 * res['extra_box_rate']:.1f}%", f"{res['ms_per_frame']:.1f}")
    console.print(table)
    out = {"localization": res}
    types_csv = frames / "wbc_types.csv"
    if types_csv.is_file() and (model is None or not (model / "model.keras").is_file()):
        out.update(_frame_types(model, images, annotations, types_csv))
    write_json(json_path, out)


def _frame_types(bundle: Path | None, images: Path, annotations: Path, types_csv: Path) -> dict:
    """Another microscope: classify the annotated boxes, then the whole pipeline per frame."""
    from rich.table import Table

    from wbcedge.bundle import DEFAULT_BUNDLE
    from wbcedge.evaluation import metrics
    from wbcedge.evaluation.evaluate import evaluate_box_crops, evaluate_frame_types
    from wbcedge.train.run_folder import open_model

    predictor = open_model(bundle or DEFAULT_BUNDLE)
    y, probs, names = evaluate_box_crops(predictor, images, annotations, types_csv)
    boxes = metrics.classification_results(y, probs, predictor.classes)
    console.print(metrics.format_table(boxes, title=f"Classifier on the annotated WBC boxes ({len(names)} single-cell frames)"))
    frames = evaluate_frame_types(bundle, images, types_csv)
    table = Table(title=f"End to end: frame type by the majority of located cells ({frames['frames']} single-type frames)")
    for col in ("class", "frames", "recall [95% CI]"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, v in frames["per_class"].items():
        ci = v["recall_ci95"]
        table.add_row(c, str(v["support"]), "-" if v["recall"] is None else
                      f"{100 * v['recall']:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")
    lo, hi = frames["accuracy_ci95"]
    table.add_row("all", str(frames["frames"]), f"{100 * frames['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    console.print(table)
    console.print(f"{frames['no_cell_frames']} frames had no identified cell (counted as wrong)")
    return {"box_crops": boxes, "frame_types": frames}
