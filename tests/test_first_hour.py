"""What a new user meets in the first hour: errors that print intact, one line for a missing extra,
an honest demo banner, help that teaches."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from wbcedge.cli import main


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["wbcedge", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_error_text_in_square_brackets_prints_intact(capsys):
    from wbcedge.cli.common import print_error

    print_error("--threshold 7: give a confidence in [0, 1], e.g. [low, high] or [bold]")
    err = capsys.readouterr().err
    assert "in [0, 1], e.g. [low, high] or [bold]" in err and err.startswith("error:")


def test_a_wbcedge_error_with_brackets_prints_intact_through_main(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "run", "--threshold", "7", "--out", str(tmp_path / "s"))
    assert code == 2
    assert "give a confidence in [0, 1]" in err


@pytest.mark.parametrize("verb,blocked,extra", [("train", "tensorflow", "train"), ("export", "tensorflow", "train"),
                                                 pytest.param("export", "tf2onnx", "export",
                                                              marks=pytest.mark.train)])  # TensorFlow must be there
def test_training_verbs_on_a_device_only_install_name_the_extra(monkeypatch, capsys, tmp_path, sample_manifest,
                                                                 repo_root, verb, blocked, extra):
    # A device-only install: None in sys.modules makes `import tensorflow` raise ModuleNotFoundError.
    for name in [m for m in sys.modules if m.split(".")[0] in (blocked, "keras" * (blocked == "tensorflow"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)
    if blocked == "tensorflow":
        monkeypatch.setitem(sys.modules, "keras", None)
    if verb == "train":
        args = ["train", str(sample_manifest), "--out", str(tmp_path / "run"), "--epochs", "1"]
    elif blocked == "tensorflow":
        run = tmp_path / "run"
        run.mkdir()
        for name in ("model.keras", "labels.json", "preprocess.json", "config.json"):  # a whole run folder
            (run / name).write_bytes(b"")
        args = ["export", str(run), "--data", str(sample_manifest), "--out", str(tmp_path / "b")]
    else:  # TensorFlow is there, the converter is not: the ONNX step says which extra brings it
        run = repo_root / "training" / "runs" / "robust-edge-step1-wise"
        if not (run / "model.keras").is_file():
            pytest.skip("needs the committed default run")
        args = ["export", str(run), "--data", str(sample_manifest), "--no-int8", "--format", "onnx",
                "--out", str(tmp_path / "b")]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 5, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert re.fullmatch(rf"error: ({blocked}|keras) is not installed and this command needs it: "
                        rf"pip install 'wbcedge\[{extra}\]' \(the training box's extra: the device never needs it\)",
                        lines[0])
    assert not (tmp_path / "run").exists() or verb == "export"  # a failed start leaves no run folder


# ---------------------------------------------------------------- the demo banner

def test_the_builtin_demo_says_it_is_a_demonstration_with_the_measured_accuracy(monkeypatch, capsys, tmp_path):
    from wbcedge.bundle import load_bundle

    check = load_bundle().manifest["other_microscope_check"]
    accuracy = f"{100 * check['cell_accuracy']:.1f}%"
    code, out, err = run_main(monkeypatch, capsys, "run", "--out", str(tmp_path / "s"))
    assert code in (0, None), err
    flat = " ".join(out.replace("│", " ").split())
    assert "DEMONSTRATION, not a result" in flat and f"classified {accuracy} correctly" in flat
    assert flat.index("DEMONSTRATION") < flat.index("White cell differential")
    page = (tmp_path / "s" / "report.html").read_text()
    assert page.index('class="banner"') < page.index("<table>")  # at the top, above the differential
    assert f"classified {accuracy} correctly" in page and "another microscope" in page
    # the run table is a table people read: no escaped JSON for timing
    assert "&quot;" not in page and "{" not in page.split("<h2>Run</h2>")[1].split("<h2>Cells</h2>")[0]
    assert "ms_per_frame</td><td><table>" in page


def test_own_frames_get_no_demo_banner_and_a_shift_alarm_lights_it_up():
    from wbcedge.device.banner import banners
    from wbcedge.device.report import render_html

    check = {"cell_accuracy": 0.25, "cell_accuracy_ci95": [0.2, 0.3], "cells": 100, "trained_on": "lab A"}
    diff = {"classes": [], "types": {}, "classified": 0, "unidentified": 0}
    assert banners({"builtin_samples": False, "other_microscope_check": check}, diff) == []
    assert banners({"domain_shift": {"alarm": False}}, diff) == []
    for meta, d in (({"domain_shift": {"alarm": True}, "other_microscope_check": check}, diff),
                    ({"other_microscope_check": check}, {**diff, "domain_shift": {"alarm": True}})):
        (notice,) = banners(meta, d)
        assert notice.startswith("DOMAIN SHIFT") and "25.0% correctly (95% CI 20.0-30.0" in notice
        assert 'class="banner"' in render_html(Path("."), d, meta, [])
    (notice,) = banners({"builtin_samples": True}, diff)  # a bundle without the measurement says so
    assert "was not measured" in notice


# ---------------------------------------------------------------- help that teaches

REPO_PATH = re.compile(r"(?<![\w./-])((?:training|export|device|docs|benchmarks|wbcedge)/[\w./-]*\w)")


def all_commands():
    """(path, click command) for every verb and sub-verb, e.g. (['data', 'split'], <Command>)."""
    import typer.main

    from wbcedge.cli import app

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in sorted(subs.items()):
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd
    return list(walk(typer.main.get_command(app), []))


def help_text(path: list[str]) -> str:
    from typer.testing import CliRunner

    from wbcedge.cli import app

    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"},
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_every_verb_help_has_examples_described_options_and_real_paths(repo_root):
    commands = all_commands()
    assert len(commands) >= 10
    problems = []
    for path, cmd in commands:
        text = help_text(path)
        flat = " ".join(text.replace("│", " ").split())
        name = " ".join(path)
        if "Example" not in text or f"wbcedge {name}" not in (cmd.epilog or ""):
            problems.append(f"{name}: no 'Example' with a `wbcedge {name}` line")
        if "<bool>" in text:
            problems.append(f"{name}: a flag shows <bool> as if it took a value")
        for cited in REPO_PATH.findall(" ".join(text.split())):
            if not (repo_root / cited).exists() and "*" not in cited and "<" not in cited:
                problems.append(f"{name}: cites {cited}, which does not exist")
        for param in cmd.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            if not (param.help or "").strip():
                problems.append(f"{name}: {param.opts[0]} has no description")
            elif " ".join(param.help.split())[-40:] not in flat:  # e.g. '[default: x]' eaten as rich markup
                problems.append(f"{name}: {param.opts[0]}'s help does not print intact")
            shown = param.required or (param.show_default is not False and param.default is not None)
            if not (shown or param.is_flag or "default" in (param.help or "").lower()
                    or param.name in ("json_path", "version")):
                problems.append(f"{name}: {param.opts[0]} shows no default")
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- the scale is asked, not guessed

@pytest.mark.train
def test_data_index_measures_the_cell_scale_and_training_uses_it(tmp_path, capsys):
    from typer.testing import CliRunner

    from wbcedge.cli import app
    from wbcedge.data import SAMPLES_DIR
    from wbcedge.data.scale import read_scale
    from wbcedge.preprocess import PreprocessSpec
    from wbcedge.train.training import spec_with_data_scale

    runner = CliRunner()
    plain, scaled = tmp_path / "plain.csv", tmp_path / "scaled.csv"
    res = runner.invoke(app, ["data", "index", str(SAMPLES_DIR), "--out", str(plain)])
    assert res.exit_code == 0, res.output
    assert "No --um-per-px" in " ".join(res.output.split())
    scale = read_scale(plain)
    assert scale["images_measured"] == 20 and scale["cells_found"] >= 18
    assert 0.3 < scale["cell_fraction"] < 0.55 and scale["crop_um"] is None  # PBC cells fill ~40% of the crop
    assert runner.invoke(app, ["data", "index", str(SAMPLES_DIR), "--out", str(scaled),
                               "--um-per-px", "0.0934"]).exit_code == 0
    measured = read_scale(scaled)
    assert measured["crop_side_px"] == 360 and measured["crop_um"] == round(360 * 0.0934, 2)  # PBC: 33.6 um
    assert 10 < measured["cell_diameter_um"] < 18  # a white cell is 10-15 um (neutrophils up to ~17 um)

    assert runner.invoke(app, ["data", "split", str(scaled), "--test-per-class", "1"]).exit_code == 0
    split = tmp_path / "scaled.split.csv"
    assert read_scale(split) == measured  # the side file follows the manifest

    lines = []
    spec = spec_with_data_scale(PreprocessSpec(), str(split), lines.append)
    assert spec.crop_um == measured["crop_um"] and spec.cell_fraction == measured["cell_fraction"]
    assert "crop policy on the device: physical crops 33.62 um wide" in lines[-1]
    lines.clear()
    spec = spec_with_data_scale(PreprocessSpec(), str(plain), lines.append)
    assert spec.crop_um is None and "crops sized relative to each cell" in lines[-1]
    assert "--um-per-px" in lines[-1]
    lines.clear()
    spec_with_data_scale(PreprocessSpec(crop_um=40.0), str(split), lines.append)  # a config from another data set
    assert lines[0].startswith("warning: the config says crop_um = 40 but") and "33.62" in lines[0]


# ---------------------------------------------------------------- devices: which OpenCV

PI_OS_OPENCV = """
  GUI:                           GTK3
    GTK+:                        YES (ver 3.24.38)
      GThread :                  YES (ver 2.74.6)
    VTK support:                 NO

  Media I/O:
  Video I/O:
    GStreamer:                   YES (1.22.0)
"""
JETPACK_OPENCV = """
  GUI:
    GTK+ 2.x:                    YES (ver 2.24.32)
    GThread :                    YES (ver 2.56.4)

  Video I/O:
    GStreamer:
      base:                      YES (ver 1.14.5)
"""
HEADLESS_OPENCV = """
  GUI:                           NONE
    VTK support:                 NO

  Video I/O:
    GStreamer:                   NO
"""


def test_opencv_build_information_is_read_for_gui_and_gstreamer():
    from wbcedge.device.opencv_build import OpenCVBuild, check_for, parse_build_information
    from wbcedge.errors import MissingDependencyError

    assert parse_build_information(PI_OS_OPENCV) == ("GTK3", True)
    assert parse_build_information(JETPACK_OPENCV)[0] == "GTK+ 2.x" and parse_build_information(JETPACK_OPENCV)[1]
    assert parse_build_information(HEADLESS_OPENCV) == (None, False)
    system = OpenCVBuild("4.6.0", "/usr/lib/python3/dist-packages/cv2", None, "GTK3", True)
    assert check_for(show=True, gstreamer=True, build=system) is system
    wheel = OpenCVBuild("5.0.0", "/venv/cv2", "opencv-python-headless", None, False)
    with pytest.raises(MissingDependencyError) as exc:
        check_for(show=True, build=wheel)
    message = str(exc.value)
    assert "GUI support (for --show)" in message and "pip uninstall opencv-python-headless" in message
    assert "[device-system-cv]" in message


def test_run_show_says_which_opencv_before_capture(monkeypatch, capsys, tmp_path):
    from wbcedge.device import opencv_build

    build = opencv_build.current()
    code, out, err = run_main(monkeypatch, capsys, "run", "--show", "--out", str(tmp_path / "s"))
    if build.gui is None:  # the headless wheel here: refused before any frame, saying which OpenCV it found
        assert code == 5 and f"OpenCV {build.version}" in err and "lacks GUI support" in err
        assert not (tmp_path / "s").exists()
    else:
        assert build.describe() in out


def test_device_system_cv_extra_has_no_opencv_and_device_keeps_one(repo_root):
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not any("opencv" in d for d in project["dependencies"])  # the base never replaces a system OpenCV
    assert not any("opencv" in d for d in extras["device-system-cv"])
    assert any(d.startswith("opencv-python-headless") for d in extras["opencv"])
    assert "wbcedge[device-system-cv,opencv]" in extras["device"] and "wbcedge[report,opencv]" in extras["train"]


def test_run_backend_onnx_picks_the_int8_onnx_unless_fp32_is_asked(tmp_path):
    from wbcedge.bundle import load_bundle
    from wbcedge.device.session import CountOptions, count_cells

    bundle = load_bundle()
    assert bundle.model_entry("onnx")["file"] == "model_int8.onnx"
    assert bundle.model_entry("onnx", "fp32")["file"] == "model_fp32.onnx"
    assert bundle.model_entry()["file"] == bundle.manifest["default_model"]
    result = count_cells(CountOptions(backend="onnx", out=tmp_path / "s", count=1))
    assert result.meta["model_file"] == "model_int8.onnx"
