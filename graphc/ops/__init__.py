"""Op families. Each family module defines its ops (`OPS`) and their builder functions;
`registry` lists the families and maps op names to definitions."""
