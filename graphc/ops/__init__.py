"""Op families. Each family module defines its ops (`OPS`) and their builder functions;
`registry` lists the families and maps op names to definitions.

A large family (conv, elementwise, indexing, shape) keeps its ops in `<family>_*.py`
submodules; the family module collects their `OPS` and re-exports their builders. Families
import each other (module imports, used inside functions), so code outside a family imports
the family module, which is the safe entry point into that cycle, not its submodules."""
