"""Pictures of every stage: graphs as DOT (`dot`), fused kernels as clusters (`fused`), the
memory plan over time (`memory`)."""
