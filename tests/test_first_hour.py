"""What a new user meets in the first hour: errors that print intact, one line for a missing extra,
an honest demo banner, help that teaches."""

from __future__ import annotations

import re
import sys

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
                                                 ("export", "tf2onnx", "export")])
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
        (run / "model.keras").write_bytes(b"")
        args = ["export", str(run), "--data", str(sample_manifest), "--out", str(tmp_path / "b")]
    else:  # TensorFlow is there, the converter is not: the ONNX step says which extra brings it
        run = repo_root / "training" / "runs" / "default-edge"
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
