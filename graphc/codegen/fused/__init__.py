"""Fused kernels evaluated by index: the expression evaluator (`expr`), the elementwise
op table (`op_table`), elementwise loop nests (`loop_nests`), reductions (`reduction`, built
on `row_reduction` and `contract`), multi-output kernels (`multi_output`), random numbers
(`rng`)."""
