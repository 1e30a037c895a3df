"""`import graphc` leaves the ONNX importer and the datasets unimported until first use
(`graphc.__getattr__`): 38 of the 252 modules it would load, which most programs never
touch. Run in a fresh interpreter, as the test process has imported everything."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_onnx_and_datasets_load_on_first_use() -> None:
    out = run("""
        import sys
        import graphc as gc
        before = [m for m in ("graphc.onnx", "graphc.datasets") if m in sys.modules]
        load, digits = gc.onnx.load, gc.datasets.digits
        from graphc import datasets, onnx
        assert onnx is gc.onnx and datasets is gc.datasets
        assert "onnx" in dir(gc) and "datasets" in dir(gc)
        print(before, callable(load) and callable(digits))
    """)
    assert out == "[] True"


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    out = run("""
        import graphc as gc
        try:
            gc.no_such_thing
        except AttributeError as exc:
            print(exc)
    """)
    assert out == "module 'graphc' has no attribute 'no_such_thing'"
