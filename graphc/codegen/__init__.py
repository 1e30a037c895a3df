"""Code generation: a memory-planned program -> one LLVM module (llvmlite's IR builder).

`module.build_module` emits one internal function per kernel and the entry point;
`lowering` is the registry that picks each kernel's emitter and scratch size. Emitters live
in packages by kernel family -- `fused/` (expressions evaluated by index: elementwise and
reduction loop nests, the elementwise op table, random numbers), `gemm/` (the packed GEMM
and the matmul lowering), `conv/` (direct and im2col convolutions), `opaque/` (softmax and
arg reductions, wide concats, gathers, pooling), `vecmath/` (our vectorized transcendental
functions) -- on shared building blocks: `context` (what an emitter sees), `target`,
`types`, `loops`, `index`, `window`, `parallel` and `threadpool`.
"""
