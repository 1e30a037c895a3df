"""Running graphs: the numpy reference interpreter, compiled executables, exported libraries."""

from graphc.runtime.library import Library, load
