"""Ops with a kernel of their own: row-wise softmax, arg reductions and wide concats
(`rows`), gathers and scatter-adds (`scatter_gather`), pooling and its gradients (`pooling`,
`pooling_grad`)."""
