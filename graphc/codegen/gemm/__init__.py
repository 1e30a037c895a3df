"""The packed, register-blocked GEMM (`emit`: `GemmSpec` -> code; `spec`, `packed`,
`unpacked`, `kernels`, `helpers`) and the matmul lowering with its fused epilogue (`matmul`)."""
