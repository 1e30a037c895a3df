"""`CompileOptions`: every knob of compilation, passed down explicitly.

Nothing below the CLI reads environment variables or global settings: the CLI (or a user)
fills in one frozen `CompileOptions` and hands it to the pass manager, codegen and runtime.
A field exists because some stage reads it; each field says which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from graphc.errors import GraphcError

if TYPE_CHECKING:  # only for annotations: options must not import the IR at run time
    from graphc.ir import Graph, Signature

CONV_ALGORITHMS = ("auto", "direct", "gemm")

# Called after a pass with (pass name, graph, signature) when that pass is to be printed.
PrintCallback = Callable[[str, "Graph", "Signature"], None]


@dataclass(frozen=True)
class CompileOptions:
    """How to compile a graph. Frozen: derive variants with `dataclasses.replace`.

    Pass manager (passes/manager.py):
      pipeline         comma-separated pass names; None means the default pipeline
                       (`passes.manager.DEFAULT_PIPELINE`).
      verify_each      run `graphc.verify.verify` after every pass (cheap; on by default).
      print_after      names of passes after which the graph is printed.
      print_after_all  print the graph after every pass.
      print_stream     where printed graphs go (a text stream); None means sys.stderr.
      print_callback   called instead of writing to `print_stream` when given.
      time_passes      write the per-pass statistics table to `print_stream` at the end.
      max_iterations   bound on the sweeps a fixed-point pass (simplify) makes.
    Passes:
      fold_max_elements  constant_fold does not materialize results with more elements.
    Code generation and runtime (read by those stages, not by the passes):
      opt_level        LLVM optimization level 0-3.
      cache_dir        directory of the compiled-object cache; None disables it.
      threads          worker threads of generated code; None means one per core. A JIT
                       compile also runs LLVM on that many threads (at most the cores
                       this process may use): `runtime.program_split`.
      profile          count the CPU cycles of every kernel (`Executable.profile()`).
      conv_algorithm   how convolutions are computed: "gemm" (im2col into the packed
                       GEMM), "direct" (register-blocked direct kernels) or "auto" (per
                       layer, by size: `graphc.codegen.conv.im2col.choose`).
      disable_features CPU features the generated code must not use although the host
                       has them (LLVM names: "avx512bf16", "avx512vnni"): code for an older
                       CPU of the family, which runs the fallback kernels.
    """

    pipeline: str | None = None
    verify_each: bool = True
    print_after: tuple[str, ...] = ()
    print_after_all: bool = False
    print_stream: TextIO | None = field(default=None, compare=False)
    print_callback: PrintCallback | None = field(default=None, compare=False)
    time_passes: bool = False
    max_iterations: int = 8
    fold_max_elements: int = 1 << 16
    opt_level: int = 2
    cache_dir: str | None = None
    threads: int | None = None
    profile: bool = False
    conv_algorithm: str = "auto"
    disable_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept any iterable of names (a list from argparse) but store a hashable tuple.
        object.__setattr__(self, "print_after", tuple(self.print_after))
        object.__setattr__(self, "disable_features", tuple(self.disable_features))
        if self.max_iterations < 1:
            raise GraphcError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if self.fold_max_elements < 0:
            raise GraphcError(f"fold_max_elements must be >= 0, got {self.fold_max_elements}")
        if not 0 <= self.opt_level <= 3:
            raise GraphcError(f"opt_level must be 0-3, got {self.opt_level}")
        if self.conv_algorithm not in CONV_ALGORITHMS:
            raise GraphcError("conv_algorithm must be 'auto', 'direct' or 'gemm', got "
                              f"{self.conv_algorithm!r}")
