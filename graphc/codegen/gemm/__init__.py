"""The packed, register-blocked GEMM (`emit`: `GemmSpec` -> code; `spec`, `packed`,
`direct`, `kernels`, `helpers`) and the matmul lowering with its fused epilogue (`matmul`)."""
