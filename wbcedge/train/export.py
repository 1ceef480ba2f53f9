"""`wbcedge export`: a run folder in, a verified bundle out, with an accuracy gate.

Every exported file is run with the runtime a device will use (ai-edge-litert
for TFLite, onnxruntime for ONNX) on the held-out split and compared with the
float Keras model: accuracy with its interval, per-class recall and its change,
top-1 agreement, size, and the quantization read back from the file. A file
over the budget makes the export fail and the bundle undeployable unless forced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wbcedge.bundle import MANIFEST, pack, write_manifest
from wbcedge.data import Record, read_manifest
from wbcedge.errors import InputDataError, InputFileMissingError, OutputFolderError
from wbcedge.evaluation.metrics import classification_results
from wbcedge.labels import CLASSES
from wbcedge.quiet import quiet_fds
from wbcedge.tomlfile import read_toml
from wbcedge.device.shift import REFERENCE_FILE, save_reference
from wbcedge.train.shift_reference import (augmented, build_reference, calibrate_file, decoded_for_augmenting,
                                           feature_check, predict_two, run_augmentation, threshold_summary)

TFLITE_INT8 = "model_int8.tflite"
EXPORT_LOG = "export.log"


_ARRAY_OPTIONS = ("calibration_override", "test_inputs_override", "unlabelled_val_inputs")  # arrays: not settings a file can hold


@dataclass
class ExportOptions:
    int8: bool = True
    formats: tuple[str, ...] = ("tflite", "onnx")
    float16: bool = False            # also a float16-weights TFLite file
    calib: int = 300                 # calibration images, class-stratified from the train split
    # Share of them shown as the run trained on them (its augmentation, zoom included), so that int8
    # ranges cover the other microscopes the model was trained to expect. Off by default: on the
    # built-in model 0.5 changed nothing measurable (model card, "int8 calibration with augmented crops").
    calib_augmented: float = 0.0
    max_drop: float = 1.0            # accuracy points a file may lose against float
    max_class_drop: float = 3.0      # recall points any class may lose
    # Absolute floors (percent): the budget above only compares a file with the float model, so a
    # useless model (e.g. one class for everything) would pass it; these refuse it outright.
    min_accuracy: float = 80.0       # overall accuracy on the test split
    min_class_recall: float = 50.0   # recall of every class
    max_share_excess: float = 30.0   # points by which a class's share of the predictions may exceed its share
                                     # of the test images (one class for everything: 100 - 20 = 80 on 5 balanced)
    activation_type: str = "uint8"   # ONNX activations: uint8 (U8S8, fastest on x86/ARM) or int8
    per_channel: bool = True
    threshold: float = 0.6           # below this calibrated top-1 probability a cell is "unidentified"
    shift_check: bool = True         # a feature output, reference statistics and a temperature (docs/shift.md)
    reference_images: int = 4000     # training crops for the reference statistics (all when fewer)
    min_feature_cosine: float = 0.95     # a file's features against the float model's, mean cosine
    min_ood_correlation: float = 0.9     # a file's OOD scores against the float model's
    force: bool = False
    seed: int = 0
    data: str | None = None          # manifest override (default: the run's training manifest)
    archive: bool = False
    calibration_override: np.ndarray | None = field(default=None, repr=False)  # tests: e.g. blank images
    # The test set's model inputs when the caller cut them itself (adapt: the site's crops exactly as it
    # trained and scored them), so the gate scores what was reported; else `labelled_inputs(test)`.
    test_inputs_override: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    # Model inputs of unlabelled cells of the same microscope, never trained on (adapt: the site's
    # unlabelled cells): they join the validation crops for the shift check's scales and thresholds,
    # which need no labels, so a site with a dozen validation cells still gets a shift check.
    unlabelled_val_inputs: np.ndarray | None = field(default=None, repr=False)


    @classmethod
    def load(cls, path: Path) -> "ExportOptions":
        """Settings from a TOML file (see export/*.toml); unknown keys are an error."""
        data = read_toml(path)
        allowed = {f for f in cls.__dataclass_fields__ if f not in _ARRAY_OPTIONS}
        unknown = set(data) - allowed
        if unknown:
            raise InputDataError(f"unknown export settings {sorted(unknown)}; known: {sorted(allowed)}")
        if "formats" in data:
            data["formats"] = tuple(data["formats"])
        return cls(**data)


class GateFailed(RuntimeError):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def calibration_records(records: list[Record], n: int, seed: int) -> list[Record]:
    """n images from the train split, the same number per class (fewer where a class has fewer)."""
    train = [r for r in records if r.split == "train"]
    rng = np.random.default_rng(seed)
    per_class = max(1, n // len(CLASSES))
    chosen = []
    for c in CLASSES:
        rows = [r for r in train if r.label == c]
        idx = rng.permutation(len(rows))[:per_class]
        chosen += [rows[i] for i in sorted(idx)]
    return chosen


def calibration_crops(records: list[Record], spec, augment: dict, share: float, seed: int,
                      stain_after_augment: bool) -> np.ndarray:
    """The calibration crops as model inputs; `share` of them (0.5: every other one) under the run's
    training augmentation, stain-normalised after it when the run trained so. A run trained without
    augmentation gets its crops as they are."""
    if not 0.0 <= share <= 1.0:
        raise InputDataError(f"calib_augmented = {share}: a share of the calibration images, between 0 and 1")
    crops, finish = decoded_for_augmenting([r.path for r in records], spec, share > 0 and stain_after_augment)
    i = np.arange(len(crops))
    pick = np.flatnonzero(np.floor((i + 1) * share) > np.floor(i * share))
    shifted = augmented(crops[pick], augment, seed, spec.cell_fraction)
    if len(shifted):
        crops[pick] = shifted
    return finish(crops)


def list_hash(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(Path(p).name for p in paths).encode()).hexdigest()


def _resolve_manifest(run_dir: Path, override: str | None) -> Path:
    if override:
        return Path(override)
    config = json.loads((run_dir / "config.json").read_text())
    for candidate in (Path(config["manifest"]), run_dir / config["manifest"]):
        if candidate.is_file():
            return candidate
    raise InputFileMissingError(f"the training manifest {config['manifest']} of {run_dir} is not here: "
                            "pass the split manifest with --data MANIFEST")


def check_bundle_output(out: Path) -> None:
    """Refuse an output path that writing a bundle there would destroy: a file, or a folder holding files that
    is not a wbcedge bundle. An earlier bundle (it has manifest.json) may be replaced: re-exporting is normal."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} is a file, not a bundle folder: give --out a new folder name")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputFolderError(f"{out} holds files and is not a wbcedge bundle (no {MANIFEST}), so writing the bundle "
                                "there would delete them: give --out a new or empty folder, or an earlier bundle's")


def export(run_dir: Path, out: Path, opts: ExportOptions, progress=print) -> dict:
    """Export, gate and bundle. Returns the report; raises GateFailed when over budget (and not forced)."""
    from wbcedge.device.runtime import Classifier
    from wbcedge.evaluation.evaluate import labelled_inputs
    from wbcedge.provenance import file_sha256, package_versions
    from wbcedge.train import convert
    from wbcedge.train.quantinfo import quantization_of
    from wbcedge.train.run_folder import load_run

    run_dir, out = Path(run_dir), Path(out)
    keras_model = load_run(run_dir)
    spec, classes = keras_model.spec, keras_model.classes
    from wbcedge.preprocess import crop_policy
    progress(f"crop policy on the device: {crop_policy(spec)} (the run's preprocess.json)")
    manifest_path = _resolve_manifest(run_dir, opts.data)
    records = read_manifest(manifest_path)
    test = [r for r in records if r.split == "test"]
    if not test:
        raise InputDataError(f"{manifest_path} has no test split to check the export on: run `wbcedge data split`")

    calib_recs = calibration_records(records, opts.calib, opts.seed)
    batch_size = int(json.loads((run_dir / "config.json").read_text()).get("batch_size", 32))
    if opts.int8 and opts.calibration_override is None:
        if len(calib_recs) < min(batch_size, 32):
            raise InputDataError(f"only {len(calib_recs)} calibration images in the train split of {manifest_path}; "
                             f"int8 calibration needs at least {min(batch_size, 32)} (a few hundred is right)")
        if len(calib_recs) < 300:
            progress(f"warning: {len(calib_recs)} calibration images; below 300 the int8 ranges are often too narrow")
    run_config = json.loads((run_dir / "config.json").read_text())
    augment = run_augmentation(run_config)
    calibration = (opts.calibration_override if opts.calibration_override is not None
                   else calibration_crops(calib_recs, spec, augment, opts.calib_augmented, opts.seed,
                                          run_config.get("stain_after_augment", False)))
    x_test, y_test = (opts.test_inputs_override if opts.test_inputs_override is not None
                      else labelled_inputs(test, spec))
    progress(f"float reference: {len(test)} test images, {len(calibration)} calibration images")
    model, feature_dim = (convert.with_feature_output(keras_model.keras_model) if opts.shift_check
                          else (keras_model.keras_model, None))
    float_probs, float_feats = predict_two(model, x_test)
    float_res = classification_results(y_test, float_probs, classes)
    base, x_val, calibration_info, shift_info = (
        build_reference(model, records, spec, classes, opts.reference_images, opts.seed, augment, progress,
                        opts.unlabelled_val_inputs,
                        stain_after_augment=run_config.get("stain_after_augment", False))  # absent: trained before it
        if feature_dim else (None, None, {"temperature": 1.0, "fitted_on": None, "note": "shift check off"},
                             {"reference": None, "note": "no feature output (shift check off at export, "
                              "or the model's last layer is not a Dense layer wider than the classes)"}))

    check_bundle_output(out)
    if out.exists():
        shutil.rmtree(out)  # an earlier bundle, or an empty folder
    out.mkdir(parents=True)
    log = out / EXPORT_LOG  # the converters' and TensorFlow's own output: hundreds of lines, kept off the console

    def converting():
        return quiet_fds(log=log, stdout=True)

    metadata = {"wbcedge.labels": json.dumps(classes), "wbcedge.preprocess": json.dumps(spec.to_dict())}
    files: list[tuple[str, str, str]] = []  # (file, backend, precision)
    if "tflite" in opts.formats:
        progress("TFLite float32")
        with converting():
            convert.to_tflite(model, out / "model_fp32.tflite", "fp32")
        files.append(("model_fp32.tflite", "tflite", "fp32"))
        if opts.float16:
            with converting():
                convert.to_tflite(model, out / "model_fp16.tflite", "fp16")
            files.append(("model_fp16.tflite", "tflite", "fp16"))
        if opts.int8:
            progress("TFLite int8 (full integer)")
            with converting():
                convert.to_tflite(model, out / TFLITE_INT8, "int8", calibration)
            files.append((TFLITE_INT8, "tflite", "int8"))
    if "onnx" in opts.formats:
        progress("ONNX float32")
        with converting():
            convert.to_onnx(model, out / "model_fp32.onnx", metadata)
        files.append(("model_fp32.onnx", "onnx", "fp32"))
        if opts.int8:
            progress(f"ONNX int8 (QDQ, {opts.activation_type} activations, per-channel weights)")
            with converting():
                convert.quantize_onnx(out / "model_fp32.onnx", out / "model_int8.onnx", calibration,
                                      opts.activation_type, opts.per_channel, metadata)
            files.append(("model_int8.onnx", "onnx", "int8"))

    references = {}
    if base is not None:
        for name, _, _ in files:
            progress(f"shift thresholds for {name} from its features of the validation crops")
            references[name] = calibrate_file(base, Classifier(out / name), x_val, opts.seed)
            shift_info["thresholds"][name] = threshold_summary(references[name])
        save_reference(out / REFERENCE_FILE, references)
    float_pred = float_probs.argmax(1)
    entries, failures = [], []
    for name, backend, precision in files:
        progress(f"checking {name} with the device runtime")
        probs, feats = Classifier(out / name).predict_many_with_features(x_test)
        res = classification_results(y_test, probs, classes)
        drop = 100 * (float_res["accuracy"] - res["accuracy"])
        class_drops = {c: 100 * (float_res["per_class"][c]["recall"] - res["per_class"][c]["recall"]) for c in classes}
        entry = {
            "file": name, "backend": backend, "precision": precision,
            "size_bytes": (out / name).stat().st_size,
            "accuracy": res["accuracy"], "accuracy_ci95": res["accuracy_ci95"],
            "accuracy_drop_pp": drop,
            "recall": {c: res["per_class"][c]["recall"] for c in classes},
            "recall_drop_pp": class_drops,
            "agreement_with_float": float((probs.argmax(1) == float_pred).mean()),
            "quantization": quantization_of(out / name),
        }
        entry["features"], broken = feature_check(feats, float_feats, references.get(name), x_test,
                                                  opts.min_feature_cosine, opts.min_ood_correlation)
        if drop > opts.max_drop:
            broken.append(f"accuracy fell {drop:.2f} points (budget {opts.max_drop})")
        for c, d in class_drops.items():
            if d > opts.max_class_drop:
                broken.append(f"{c} recall fell {d:.2f} points (budget {opts.max_class_drop})")
        broken += floor_failures(y_test, probs.argmax(1), res, classes, opts)
        if precision == "int8" and backend == "tflite" and not entry["quantization"]["fully_integer"]:
            broken.append("the file is not fully integer (float tensors remain)")
        entry["within_budget"] = not broken
        entry["budget_failures"] = broken
        if broken:
            failures.append(f"{name}: " + "; ".join(broken))
        entries.append(entry)

    int8_ok = [e for e in entries if e["precision"] == "int8" and e["within_budget"]]
    default = (int8_ok[0] if int8_ok else next((e for e in entries if e["precision"] == "fp32"), entries[0]))["file"]
    deployable = not failures or opts.force
    report = {
        "run": str(run_dir), "test_images": len(test), "test_manifest": str(manifest_path),
        "float": {"accuracy": float_res["accuracy"], "accuracy_ci95": float_res["accuracy_ci95"],
                  "recall": {c: float_res["per_class"][c]["recall"] for c in classes}},
        "budget": {"max_drop_pp": opts.max_drop, "max_class_drop_pp": opts.max_class_drop,
                   "min_feature_cosine": opts.min_feature_cosine, "min_ood_correlation": opts.min_ood_correlation},
        "floors": {"min_accuracy_pct": opts.min_accuracy, "min_class_recall_pct": opts.min_class_recall,
                   "max_share_excess_pp": opts.max_share_excess},
        "temperature": calibration_info, "domain_shift": shift_info,
        "files": entries, "failures": failures, "forced": bool(failures and opts.force),
        "calibration": {"images": len(calibration), "per_channel": opts.per_channel,
                        "augmented_share": opts.calib_augmented if opts.calibration_override is None else None,
                        "onnx_activation_type": opts.activation_type,
                        "file_list_sha256": list_hash([r.path for r in calib_recs])
                        if opts.calibration_override is None else "override"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report) + "\n")
    (out / "labels.json").write_text(json.dumps(classes) + "\n")
    spec.save(out)
    write_manifest(out, {
        "classes": classes, "preprocess": spec.to_dict(), "confidence_threshold": opts.threshold,
        "calibration": calibration_info, "domain_shift": shift_info,
        "models": [{k: e[k] for k in ("file", "backend", "precision", "within_budget", "accuracy", "size_bytes")}
                   for e in entries],
        "default_model": default, "deployable": deployable,
        "data": {"training_manifest_sha256": (run_dir / "manifest.sha256").read_text().strip()
                 if (run_dir / "manifest.sha256").exists() else None,
                 "test_manifest_sha256": file_sha256(manifest_path),
                 "calibration_sha256": report["calibration"]["file_list_sha256"]},
        "source_run": run_dir.name, "versions": package_versions(),
        "export_options": {**{k: v for k, v in asdict(opts).items() if k not in _ARRAY_OPTIONS},
                           "test_inputs": "override" if opts.test_inputs_override is not None else "test split"},
    })
    if opts.archive:
        pack(out, out.with_name(out.name + ".tar.gz"))
    if failures and not opts.force:
        below_floor = any("floor" in f for f in failures)
        over_budget = any("budget" in f or "fully integer" in f for f in failures)
        advice = ("A file below an absolute floor means the model itself is not good enough: train longer, on more "
                  "or better-labelled images, check the split with `wbcedge data check`, or lower the floors in an "
                  "export config (see export/default.toml) if you accept that. " if below_floor else "")
        if over_budget:
            advice += ("For the budget, try: more or more varied calibration images (--calib 500), per-channel "
                       "weights (default), int8 ONNX activations (--activation-type int8), or excluding the failing "
                       "format. ")
        raise GateFailed(
            "export failed the accuracy gate, bundle marked NOT deployable:\n  " + "\n  ".join(failures) +
            "\n" + advice +
            "--force marks it deployable anyway and keeps the failure in the report.", report)
    return report


def floor_failures(y_true: np.ndarray, y_pred: np.ndarray, results: dict, classes: list[str],
                   opts: ExportOptions) -> list[str]:
    """The absolute floors one file breaks, each naming the floor and by how much it is missed."""
    broken = []
    acc = 100 * results["accuracy"]
    if acc < opts.min_accuracy:
        broken.append(f"accuracy {acc:.2f}% is {opts.min_accuracy - acc:.2f} points below the floor "
                      f"min_accuracy = {opts.min_accuracy:g}%")
    for c in classes:
        recall = 100 * results["per_class"][c]["recall"]
        if results["per_class"][c].get("support", 1) and recall < opts.min_class_recall:
            broken.append(f"{c} recall {recall:.2f}% is {opts.min_class_recall - recall:.2f} points below the floor "
                          f"min_class_recall = {opts.min_class_recall:g}%")
    n = max(1, len(y_true))
    for i, c in enumerate(classes):
        predicted, actual = 100 * float(np.sum(y_pred == i)) / n, 100 * float(np.sum(y_true == i)) / n
        excess = predicted - actual
        if excess > opts.max_share_excess:
            broken.append(f"predictions collapse onto {c}: {predicted:.1f}% of the test predictions but {actual:.1f}% "
                          f"of the test images, {excess - opts.max_share_excess:.1f} points over the floor "
                          f"max_share_excess = {opts.max_share_excess:g}")
    return broken


def report_markdown(report: dict) -> str:
    lines = [f"# Export report: {report['run']}", "",
             f"Held-out images: {report['test_images']} ({report['test_manifest']}); float Keras accuracy "
             f"{100 * report['float']['accuracy']:.2f}% (95% CI {100 * report['float']['accuracy_ci95'][0]:.2f}-"
             f"{100 * report['float']['accuracy_ci95'][1]:.2f}).", "",
             f"Budget: at most {report['budget']['max_drop_pp']} points accuracy drop, "
             f"{report['budget']['max_class_drop_pp']} points in any class recall." +
             (f" Floors: accuracy at least {report['floors']['min_accuracy_pct']:g}%, every class recall at least "
              f"{report['floors']['min_class_recall_pct']:g}%, no class predicted more than "
              f"{report['floors']['max_share_excess_pp']:g} points above its share of the test images."
              if "floors" in report else ""), "",
             "| file | precision | size | accuracy (95% CI) | drop (pp) | worst class drop (pp) | agreement | quantization read back | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in report["files"]:
        worst = max(e["recall_drop_pp"].items(), key=lambda kv: kv[1])
        q = e["quantization"]
        if e["backend"] == "tflite":
            qtext = f"in {q['input_dtype']}, out {q['output_dtype']}, fully integer: {q['fully_integer']}, per-channel tensors {q['per_channel_tensors']}"
        else:
            qtext = f"QDQ nodes {q['quantize_nodes']}/{q['dequantize_nodes']}, per-channel weights {q['per_channel_weights']}, float convs {q['float_weight_convs']}"
        lines.append(f"| {e['file']} | {e['precision']} | {e['size_bytes'] / 1e6:.2f} MB | {100 * e['accuracy']:.2f}% "
                     f"({100 * e['accuracy_ci95'][0]:.1f}-{100 * e['accuracy_ci95'][1]:.1f}) | {e['accuracy_drop_pp']:+.2f} | "
                     f"{worst[0]} {worst[1]:+.2f} | {100 * e['agreement_with_float']:.2f}% | {qtext} | "
                     f"{'within budget' if e['within_budget'] else 'OVER BUDGET'} |")
    feats = [(e["file"], e["features"]) for e in report["files"] if e.get("features")]
    if feats:
        lines += ["", "Feature output (domain-shift check), against the float model on the same images:", "",
                  "| file | mean cosine (min) | OOD score correlation | over the cell threshold (float) |",
                  "|---|---|---|---|"]
        for name, f in feats:
            if not f.get("present"):
                lines.append(f"| {name} | missing | | |")
                continue
            corr = f.get("ood_score_correlation")
            over = (f"{100 * f['ood_over_cell_threshold']:.1f}% ({100 * f['ood_over_cell_threshold_float']:.1f}%)"
                    if "ood_over_cell_threshold" in f else "")
            lines.append(f"| {name} | {f['cosine_mean']:.4f} ({f['cosine_min']:.3f}) | "
                         f"{'' if corr is None else f'{corr:.4f}'} | {over} |")
    t = report.get("temperature") or {}
    if t.get("fitted_on"):
        lines += ["", f"Temperature {t['temperature']:.3f} fitted on {t['images']} validation images: ECE "
                  f"{100 * t['ece_before']:.2f}% -> {100 * t['ece_after']:.2f}%, NLL {t['nll_before']:.4f} -> "
                  f"{t['nll_after']:.4f}."]
    if report["failures"]:
        lines += ["", "**Failures:**", *[f"- {f}" for f in report["failures"]]]
        if report["forced"]:
            lines.append("- exported with --force: marked deployable despite the failures above")
    return "\n".join(lines)
