"""Graph -> graph passes (installed as `graphc.passes`)."""
