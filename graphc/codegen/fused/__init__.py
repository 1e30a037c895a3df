"""Fused kernels evaluated by index: the expression evaluator (`expr`), the elementwise
op table (`op_table`), and the elementwise and reduction loop nests (`loop_nests`)."""
