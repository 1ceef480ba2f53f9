"""The device side never imports TensorFlow, Keras or tf2onnx, and its commands work with them blocked.

The module list is walked with pkgutil, so a new module is covered the day it is added:
everything in `wbcedge` except `wbcedge.train` (the one place allowed to import
TensorFlow). `wbcedge.bench.worker` is imported too: only its Keras job imports
TensorFlow, inside the function that runs it. import-linter checks the same boundary
statically (pyproject.toml [tool.importlinter]); this checks it at run time, including
imports made inside functions.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import wbcedge

BLOCKED = ("tensorflow", "keras", "tf2onnx", "tf_keras")
BLOCKER = textwrap.dedent(f"""
    import sys
    class _DeviceBlock:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"blocked on the device: {{name}}")
    sys.meta_path.insert(0, _DeviceBlock())
""")


def device_modules() -> list[str]:
    """Every module of wbcedge but wbcedge.train and __main__ (which runs the CLI), found without importing."""
    def walk(folder: str, prefix: str):
        for info in pkgutil.iter_modules([folder]):
            name = prefix + info.name
            if name in ("wbcedge.train", "wbcedge.__main__"):
                continue
            yield name
            if info.ispkg:
                yield from walk(os.path.join(folder, info.name), name + ".")
    return ["wbcedge", *sorted(walk(wbcedge.__path__[0], "wbcedge."))]


def blocked_env(tmp_path: Path) -> dict:
    """A sitecustomize on PYTHONPATH blocks the imports in this process and in every worker it starts."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env=blocked_env(tmp_path), timeout=300)


def test_the_walk_finds_every_part_of_the_device_side():
    mods = device_modules()
    for expected in ("wbcedge.bundle", "wbcedge.preprocess", "wbcedge.device.runtime", "wbcedge.device.session",
                     "wbcedge.data.manifest", "wbcedge.evaluation.metrics", "wbcedge.bench.runner",
                     "wbcedge.bench.worker", "wbcedge.cli.run_cmd"):
        assert expected in mods
    assert not any(m.startswith("wbcedge.train") for m in mods)


def test_every_device_module_imports_without_tensorflow(tmp_path):
    mods = device_modules()
    res = run_blocked(f"""
        import importlib, sys
        for name in {mods!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r})
        assert not leaked, leaked
        print('imported', len({mods!r}))
    """, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"imported {len(mods)}" in res.stdout


def test_device_commands_work_with_tensorflow_blocked(tmp_path):
    """`run`, `bench --no-baseline`, `bundle verify/inspect/pack/unpack`, through the console entry point."""
    session, bench_json, inspect_json = tmp_path / "session", tmp_path / "bench.json", tmp_path / "inspect.json"
    archive, unpacked = tmp_path / "b.tar.gz", tmp_path / "unpacked"
    commands = [
        ["bundle", "verify"],
        ["bundle", "inspect", "--json", str(inspect_json)],
        ["bundle", "pack", str(wbcedge.__path__[0] + "/default_bundle"), "--out", str(archive)],
        ["bundle", "unpack", str(archive), str(unpacked)],
        ["run", "--out", str(session), "--count", "3"],
        ["bench", str(unpacked), "--no-baseline", "--backends", "tflite", "--precision", "int8", "--threads", "1",
         "--runs", "5", "--warmup", "1", "--repeats", "1", "--pipeline-frames", "3", "--out", str(bench_json)],
    ]
    res = run_blocked(f"""
        import sys
        from wbcedge.cli import main
        for args in {commands!r}:
            sys.argv = ["wbcedge", *args]
            try:
                main()
            except SystemExit as e:
                assert e.code in (0, None), (args, e.code)
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r})
        assert not leaked, leaked
        print('ok')
    """, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok" in res.stdout and "Traceback" not in res.stderr
    assert (session / "report.html").is_file()
    assert json.loads(inspect_json.read_text())["verification_problems"] == []
    bench = json.loads(bench_json.read_text())
    assert bench["rows"] and not bench["tensorflow_imported_by_device_path"] and bench["baseline"] is None
    assert bench["pipeline"]["tensorflow_imported"] is False
