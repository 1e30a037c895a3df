"""Convolution lowerings: direct register-blocked kernels (`direct`, `channels`,
`weight_grad`) and im2col into the packed GEMM (`im2col`); `epilogue` is shared by both."""
