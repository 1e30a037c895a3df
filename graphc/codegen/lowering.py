"""The lowering registry (being filled while the codegen packages are laid out)."""

from __future__ import annotations

from graphc.codegen.gemm import matmul
from graphc.codegen.target import Target
from graphc.passes.fuse import Kernel


def epilogue_writes_once(kernel: Kernel, target: Target) -> bool:
    """Whether `kernel` applies its epilogue once per output element, at the final store."""
    return matmul.epilogue_writes_once(kernel, target)
