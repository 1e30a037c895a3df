"""`gc.export`: a compiled signature as a shared library + C header needing only libc
(`api`), its memory layout (`layout`), the C wrapper (`csource`) and header (`header`) from
templates, and the link step (`link`)."""
