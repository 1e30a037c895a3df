"""`gc.export`: a compiled signature as a shared library + C header needing only libc
(`api`), where its ports, weights and context memory live (`library_layout`), the C wrapper
(`csource`) and header (`header`) rendered from `templates/` (`render`), and the link step
(`link`)."""
