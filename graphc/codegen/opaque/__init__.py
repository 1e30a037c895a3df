"""Ops with a kernel of their own: row-wise softmax, arg reductions and wide concats
(`rows`), gathers and scatter-adds (`gather`), pooling and its gradients (`pool`,
`pool_grad`)."""
