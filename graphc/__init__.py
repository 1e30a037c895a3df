"""graphc: a static-graph deep-learning compiler and executor for the CPU.

This module is the public face: it re-exports the API and holds no logic. Each op family
lists its public builder functions in its `__all__`.
"""

import importlib as _importlib
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING as _TYPE_CHECKING

from graphc import distributed, init, nn, optim
from graphc._version import __version__
from graphc.builder import constant, placeholder, variable
from graphc.compile import compile
from graphc.errors import (
    ArgumentError,
    AttrError,
    CompileError,
    DTypeError,
    GraphcError,
    GraphNameError,
    GraphStructureError,
    SerializationError,
    ShapeError,
    SourceLoc,
    VerifyError,
)
from graphc.export.api import ExportedLibrary, export
from graphc.gradcheck import GradCheckResult, check_grad
from graphc.io.checkpoint import load_checkpoint, save_checkpoint
from graphc.io.gcg import load, save
from graphc.io.textir import format_graph, parse_graph
from graphc.ir import (
    DType,
    Graph,
    Node,
    Signature,
    TensorType,
    bfloat16,
    bool_,
    float32,
    float64,
    from_bfloat16,
    int8,
    int32,
    int64,
    to_bfloat16,
    uint8,
)
from graphc.ops import registry as _registry  # fills the operator table of Node
from graphc.ops.attention import *
from graphc.ops.collective import *
from graphc.ops.control import *
from graphc.ops.conv import *
from graphc.ops.elementwise import *
from graphc.ops.gather import *
from graphc.ops.join import *
from graphc.ops.layout import *
from graphc.ops.linalg import *
from graphc.ops.neural import *
from graphc.ops.norm import *
from graphc.ops.pool import *
from graphc.ops.random import *
from graphc.ops.reduce import *
from graphc.ops.sequence import *
from graphc.ops.slicing import *
from graphc.options import CompileOptions
from graphc.passes.autocast import AutocastDecision, autocast, autocast_decisions, explain_autocast
from graphc.passes.autodiff import grad
from graphc.passes.freeze import freeze, frozen_variables
from graphc.quant import quantize_dynamic, quantize_static
from graphc.runtime.executable import Executable
from graphc.runtime.reference import reference
from graphc.training import History, Model, callbacks, data, metrics
from graphc.verify import verify

# Imported on first use (`gc.onnx.load(...)`, `from graphc import datasets`): 38 of the 252
# modules `import graphc` would load (ONNX rules and loaders), which most programs never
# touch. (Importing a submodule sets it as this module's attribute: no second call.)
_LAZY = ("datasets", "onnx")

if _TYPE_CHECKING:  # for type checkers, which do not run __getattr__
    from graphc import datasets, onnx


def __getattr__(name: str) -> _ModuleType:
    if name in _LAZY:
        return _importlib.import_module(f"graphc.{name}")
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
