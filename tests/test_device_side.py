"""The device side never imports TensorFlow: `import wbcedge`, `run`, `bundle` work with it blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx"):
                raise ImportError(f"blocked on the device: {name}")
    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd)


def test_device_modules_import_without_tensorflow(tmp_path):
    res = run_blocked("""
        import wbcedge, wbcedge.cli, wbcedge.device.runtime, wbcedge.bundle, wbcedge.device.pipeline, wbcedge.device.capture
        import wbcedge.device.locate, wbcedge.device.differential, wbcedge.device.records, wbcedge.device.report, wbcedge.device.track, wbcedge.preprocess
        import wbcedge.evaluation.evaluate, wbcedge.evaluation.metrics, wbcedge.data
        import sys
        assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules), 'tensorflow leaked'
        print('ok')
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def test_run_and_bundle_verify_work_with_tensorflow_blocked(tmp_path):
    res = run_blocked(f"""
        import sys
        from wbcedge.cli import app
        for args in (["bundle", "verify"], ["run", "--out", r"{tmp_path / 'run'}"]):
            try:
                app(args)
            except SystemExit as e:
                assert e.code in (0, None), (args, e.code)
        assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules), 'tensorflow leaked'
        print('ok')
    """, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "run" / "report.html").is_file()
