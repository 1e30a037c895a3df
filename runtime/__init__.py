"""Running graphs: the numpy reference interpreter, and (later) compiled executables."""
