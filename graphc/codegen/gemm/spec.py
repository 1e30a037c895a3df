"""What a GEMM computes (`GemmSpec`) and how it will be computed (`GemmPlan`).

The plan is a pure function of the spec and the target, so `GemmSpec.scratch_bytes` (asked by
the memory planner) and `emit_gemm` (the code) always agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.target import Target
from graphc.ir import DType

Epilogue = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, int], ir.Value]
"""epilogue(builder, row_i64, col_i64, acc, lanes) -> the value to store at
C[row, col:col+lanes]. `acc` is <lanes x T> (a scalar T when lanes == 1) holding the complete
sums (plus the old C when accumulating). It is only called for in-bounds columns, so it may
load bias[col:col+lanes] unmasked."""

_SMALL = 4  # M or N up to this uses the direct (unpacked) paths when the layout allows
# Up to this many rows, streaming B once with the rows' accumulators (nvec) beat packing:
# measured 1.4-9x faster for 5-8 rows (N 10-512, K 256-784); at 16 rows packing wins.
_FEW_ROWS = 8
# Up to this many rows (4 register blocks) B is read in place rather than packed.
_IN_PLACE_B_ROWS = 32
# From this many multiply-adds a row-major A (one K block), or a B of whole short rows, is
# read in place (`plan_gemm`).
_IN_PLACE_MACS = 1 << 22


@dataclass(frozen=True)
class GemmSpec:
    """C[m x n] = op(A) @ op(B) with static shapes; row-major storage, strides in elements.

    trans_a=False: A is stored m x k (A[i, p] at i*lda + p); True: stored k x m (p*lda + i).
    trans_b=False: B is stored k x n (B[p, j] at p*ldb + j); True: stored n x k (j*ldb + p).
    C[i, j] is at i*ldc + j.
    b_panels=P > 0: B is stored as the packed GEMM reads it (`graphc.ops.panels`; trans_b
    False, ldb unused): column panels of P, each k x width row-major, panel q at q*P*k;
    width P except a narrower last panel. P must be the register block's NR for this spec
    (`kernel_shape`); such a B (a constant weight, prepacked at compile time) is never
    packed again, only its narrower last panel.
    """

    m: int
    n: int
    k: int
    dtype: DType
    trans_a: bool
    trans_b: bool
    lda: int
    ldb: int
    ldc: int
    b_panels: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in (DType.float32, DType.float64, DType.int32, DType.int64):
            raise ValueError(f"GEMM of {self.dtype.value} is not supported")
        if min(self.m, self.n, self.k) < 0:
            raise ValueError(f"negative GEMM size {self.m}x{self.n}x{self.k}")
        need = {"lda": self.m if self.trans_a else self.k,
                "ldb": self.k if self.trans_b else self.n, "ldc": self.n}
        for name, width in need.items():
            if getattr(self, name) < width:
                raise ValueError(f"{name}={getattr(self, name)} is less than the row width "
                                 f"{width} of {self}")
        if self.b_panels < 0 or (self.b_panels and self.trans_b):
            raise ValueError(f"b_panels={self.b_panels} needs a B that is not transposed")

    @property
    def a_strides(self) -> tuple[int, int]:
        """(stride over i, stride over p) of A."""
        return (1, self.lda) if self.trans_a else (self.lda, 1)

    @property
    def b_strides(self) -> tuple[int, int]:
        """(stride over p, stride over j) of B."""
        return (1, self.ldb) if self.trans_b else (self.ldb, 1)

    def scratch_bytes(self, target: Target) -> int:
        """Bytes of 64-byte-aligned scratch `emit_gemm` needs for packed panels (0 if none)."""
        return plan_gemm(self, target).scratch_bytes


@dataclass(frozen=True)
class GemmPlan:
    """How a spec is computed.

    path: "empty" (m or n is 0: nothing to do), "zero_k" (k == 0), "kdot" (dot products along
    contiguous k), "nvec" (few rows, vectors along contiguous columns of B), "packed".
    For "packed": an mr x nr register block of `lanes`-wide vectors, cache blocks mc x kc
    (A) and kc x nc (B), and the scratch layout (byte offsets).
    """

    path: str
    lanes: int
    mr: int = 0
    nr: int = 0
    mc: int = 0
    kc: int = 0
    nc: int = 0
    pack_a: bool = True
    pack_b: bool = True
    b_offset: int = 0
    tile_offset: int = 0
    scratch_bytes: int = 0


# Bytes of one packed row of a KC block (see `plan_gemm`); a module constant so blocking
# experiments can vary it (with the compile caches off).
KC_BYTES = 2048


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def kernel_shape(dtype: DType, target: Target, n: int) -> tuple[int, int, int]:
    """(MR, NR, lanes) of the register block for this dtype on this target.

    With 32 vector registers: MR x NR = 8 x (2 vectors), 16 accumulators: 8 x 32 float32,
    8 x 16 float64 (on Zen 4, 12x32, 14x32, 6x48, 4x64 and 16x16 measured no faster). When
    all of N fits in one vector, a single vector column of 16 rows wastes less work on zero
    padding. With 16 registers (AVX2 and older): 6 x 2 vectors, 12 accumulators.
    """
    w = target.lanes(dtype.itemsize)
    wide = target.registers == 32
    if n <= w:
        return (16 if wide else 8), w, w
    return (8 if wide else 6), 2 * w, w


def fitted_rows(m: int, mr: int) -> int:
    """The register block's rows for M rows: `mr`, or one or two fewer when that computes
    at least 2% fewer padded rows (a partial last row tile runs the whole block on zero
    rows). 49 rows (a 7x7 map as the rows): 7 x 7 instead of 56 with 8-row tiles. Zen 4,
    one thread, 8 x 32 floats: blocks of 6, 7 and 8 rows measured within noise of each
    other when all divide M, so the padding decides; ties keep the larger block (more reuse
    of each B vector, fewer tiles), and so does every M that `mr` divides. The 6-row block
    of 16 registers may become 5 rows (10 accumulators still hide the FMA latency): Zen 3,
    one thread, MobileNetV2's 7x7 1x1 layers as 50 rows instead of 54 took 2-5% less time
    each (same-process A/B in both orders); 4 rows were not measured."""
    if mr not in (6, 8) or m % mr == 0:  # the blocks measured this way
        return mr
    best, best_rows = mr, -(-m // mr) * mr
    for cand in (mr - 1, mr - 2) if mr == 8 else (mr - 1,):
        rows = -(-m // cand) * cand
        if 50 * rows <= 49 * best_rows:
            best, best_rows = cand, rows
    return best


def plan_gemm(spec: GemmSpec, target: Target) -> GemmPlan:
    """Choose the path, register block and cache blocking for `spec` on `target`."""
    m, n, k = spec.m, spec.n, spec.k
    w = target.lanes(spec.dtype.itemsize)
    if m == 0 or n == 0:
        return GemmPlan("empty", w)
    if k == 0:
        return GemmPlan("zero_k", w)
    _, sa_p = spec.a_strides
    sb_p, sb_j = spec.b_strides
    k_contig = (sa_p == 1 or k == 1) and (sb_p == 1 or k == 1)
    j_contig = sb_j == 1 or n == 1
    if n <= _SMALL and k_contig and not spec.b_panels:
        return GemmPlan("kdot", w)
    if not spec.b_panels:  # the direct paths read B by rows or columns
        if m <= _SMALL and j_contig:
            return GemmPlan("nvec", w)
        if m <= _SMALL and k_contig:
            return GemmPlan("kdot", w)
        if m <= _FEW_ROWS and j_contig:
            return GemmPlan("nvec", w)
    mr, nr, w = kernel_shape(spec.dtype, target, n)
    mr = fitted_rows(m, mr)
    isz = spec.dtype.itemsize
    # KC 512 float32 / 256 float64 (2 KiB of each packed row), MC 96: the A block (mc x kc,
    # 192 KiB) stays in L2 while B micro-panels pass through L1/L2. KC 256-768 and MC 48-192
    # measured within noise of this on Zen 4. K is split into equal blocks rather than a long
    # one and a short tail.
    kc_max = KC_BYTES // isz
    nkb = -(-k // kc_max)
    kc = min(k, _round_up(-(-k // nkb), 8))
    mc = min(_round_up(m, mr), max(mr, (96 // mr) * mr))
    if spec.b_panels:
        return _plan_panels(spec, mr, nr, w, kc, mc, wide=target.registers == 32)
    # NC: the packed B block (kc x nc) in L2/L3; all of N up to 4096 columns.
    nc = min(_round_up(n, nr), max(nr, 4096 // nr * nr))
    # For a row-major B in one NC block, full NR-wide panels are read in place (a partial
    # last panel is still packed): with few row panels each packed panel would be used only
    # a few times (an RNN's per-step h @ W repacked W at every step), and a whole B of
    # short rows streams through the cache as well in place as packed, so packing is a
    # pass saved (MLP layers 784x512, 512x512 at batch 128-256: 1.5% faster). Not for rows
    # of 4 KiB or more (1024^3: 4% slower, every row of a panel in one cache set), nor for
    # a column slice of a wider B (a thread's half of 256^3: up to 10% slower).
    # A row-major A read in place needs a micro-kernel specialised for its row stride (~20 ms
    # of compile time; B read in place shares the packed kernel: `micro_kernel`), so the two
    # layouts below are for GEMMs big enough to gain from them, and only with 32 vector
    # registers: the 6 x 16 AVX2 kernel reads twice the B vectors per FMA, and on Zen 3
    # (one thread) reading a big GEMM's A or B in place lost 15-30% (512^3: 55-65 ->
    # 76-86 GFLOP/s packed; 256x512x512: 52-60 -> 63-71), while B in place for few rows
    # still gained (32x512x512: 42 -> 51).
    big = m * n * k >= _IN_PLACE_MACS and target.registers == 32
    short_rows = big and spec.ldb == n and n * spec.dtype.itemsize < 4096
    # With few rows, B is read in place at any width, as one NC block: NC only sizes the
    # packed B block, and packing a wide B that few rows use costs more than it saves (Zen
    # 3, one thread, 1x1 convolutions as GEMMs: 32 -> 16 on a 112x112 map, 12544 columns
    # of 16 rows, 313 -> 277 us; 96 -> 24 on 56x56 266 -> 218).
    few_rows = m <= _IN_PLACE_B_ROWS
    pack_b = not (n > nr and sb_j == 1 and (n <= nc or few_rows) and (few_rows or short_rows))
    if not pack_b:
        nc = _round_up(n, nr)
    # A is read in place, only the partial last row panel packed, when all of N is one
    # panel (each A panel would be used once), and when A is row-major with one K block
    # (the kernel broadcasts each A element from its row, as ONNX Runtime's MLAS does):
    # 1.5% faster for 256^3 on one thread, and with threads splitting the columns no task
    # packs all of A. Several K blocks of a wide A (1024^3) measured 3% slower in place.
    pack_a = n > nr and not (big and pack_b and sa_p == 1 and k <= kc_max)
    if not pack_a:
        mc = mr
    a_bytes = _round_up(mc * kc * isz, 64)
    b_bytes = _round_up((nc if pack_b else nr) * kc * isz, 64)  # in place: the last panel
    tile = _round_up(mr * nr * isz, 64)
    return GemmPlan("packed", w, mr, nr, mc, kc, nc, pack_a=pack_a, pack_b=pack_b,
                    b_offset=a_bytes,
                    tile_offset=a_bytes + b_bytes, scratch_bytes=a_bytes + b_bytes + tile)


def _plan_panels(spec: GemmSpec, mr: int, nr: int, w: int, kc: int, mc: int, *,
                 wide: bool) -> GemmPlan:
    """The packed plan of a B stored in panels (`GemmSpec.b_panels`): its full panels are
    read in place (one NC block of all of N); A is packed in MC x KC blocks as usual, or,
    stored transposed (k x m: a convolution's X^T) on a `wide` target (32 registers), read
    in place, since each k step's MR elements are contiguous as in a packed panel (only a
    partial last row block packed). With 16 registers (6-row blocks) the in-place A, one
    line per k step of which a block uses 24 bytes, lost 2-5% of MobileNetV2 on Zen 3
    (one thread, same-process A/B: 10.76 / 10.53 ms in place, 10.20 / 10.31 packed)."""
    if spec.b_panels != nr:
        raise ValueError(f"b_panels={spec.b_panels} but the register block of {spec} on "
                         f"this target is {nr} columns wide")
    isz = spec.dtype.itemsize
    pack_a = not (wide and spec.trans_a)
    if not pack_a:
        mc = mr
    nc = _round_up(spec.n, nr)
    a_bytes = _round_up(mc * kc * isz, 64)
    b_bytes = _round_up(nr * kc * isz, 64) if spec.n % nr else 0  # the narrower last panel
    tile = _round_up(mr * nr * isz, 64)
    return GemmPlan("packed", w, mr, nr, mc, kc, nc, pack_a=pack_a, pack_b=False,
                    b_offset=a_bytes, tile_offset=a_bytes + b_bytes,
                    scratch_bytes=a_bytes + b_bytes + tile)
