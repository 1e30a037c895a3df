"""Pictures of every stage: graphs as DOT (`dot`), fused kernels as clusters (`fused`), the
memory plan over time (`memory`: SVG drawn directly, or DOT for ``neato -n``); `dotlib` holds
the DOT quoting and node styles `dot` and `fused` share."""
