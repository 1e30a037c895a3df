"""Compiling for a target other than the host's, in tests."""

from __future__ import annotations

import dataclasses

import pytest

from graphc import pipeline
from graphc.codegen.target import Target
from graphc.codegen.vecmath import emitter


def avx2(monkeypatch: pytest.MonkeyPatch) -> Target:
    """Make `gc.compile` generate code for a 256-bit target (16 registers, no AVX-512) on
    any host that has AVX2 and FMA (AVX2 code runs on AVX-512 hosts too); skip elsewhere.
    Returns that target."""
    host = pipeline.host_target()
    if not host.has("avx2") or not host.has("fma"):
        pytest.skip("needs an AVX2+FMA host")
    avx512 = tuple(f[1:] for f in host.features.split(",") if f.startswith("+avx512"))
    target = dataclasses.replace(host.without(avx512), vector_bits=256)
    monkeypatch.setattr(pipeline, "host_target", lambda: target)
    monkeypatch.setattr(emitter, "use_avx512", lambda: False)  # vecmath's scalef
    return target
