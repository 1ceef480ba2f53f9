"""`wbcedge run` on a source with no readable image: exit 2 and one error line; each bad file warned about once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wbcedge.cli import app
from wbcedge.device.session import SAMPLE_FRAMES

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["run", *args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def fake_jpeg(folder: Path, name: str = "fake.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("this is a text file, not a JPEG\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_source_with_no_readable_image_exits_2_with_one_error_line(tmp_path, kind):
    if kind == "file":
        source = fake_jpeg(tmp_path / "bad")
        names = ["fake.jpg"]
    else:
        source = tmp_path / "bad"
        names = ["fake.jpg", "empty.png", "notes.tif"]
        fake_jpeg(source, "fake.jpg")
        (source / "empty.png").write_bytes(b"")
        fake_jpeg(source, "notes.tif")
    res = run("--source", str(source), "--out", str(tmp_path / "session"))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = error_lines(res.output)
    assert len(errors) == 1, res.output
    assert str(source) in errors[0] and "no readable image" in errors[0]
    assert "JPEG or PNG frames" in errors[0] and "video" in errors[0]
    warnings = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert sorted(line.split(":")[1] for line in warnings) == sorted(f" skipped {name}" for name in names), \
        res.output  # each bad file once, and nothing else
    assert f"{len(names)} file" in errors[0]
    assert "White cell differential" not in res.output and "stop: source ended" not in res.output


def test_a_folder_with_one_good_frame_counts_and_warns_once_per_bad_file(tmp_path):
    source = tmp_path / "mixed"
    fake_jpeg(source)
    good = min(SAMPLE_FRAMES.glob("*.jpg"))
    shutil.copy(good, source / good.name)
    res = run("--source", str(source), "--out", str(tmp_path / "session"))
    assert res.exit_code == 0, res.output
    assert not error_lines(res.output)
    assert [line for line in res.output.splitlines() if "fake.jpg" in line] == \
        ["warning: skipped fake.jpg: not a readable image (not a PNG, JPEG, BMP, TIFF or WebP file)"]
    assert "1 frame skipped: named above" in res.output
    assert "1 frames (0 blurred)" in res.output and "fake.jpg" in (tmp_path / "session" / "report.html").read_text()
