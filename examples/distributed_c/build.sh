#!/bin/sh
# Export the data-parallel step, build the C trainer against it and run it on 2 ranks,
# then the same training in Python; the two weight files are equal byte for byte.
# Usage: examples/distributed_c/build.sh [BUILD_DIR]
# Needs: python with graphc, mpi4py and mpich (pip install 'graphc[distributed]': the mpich
# wheel ships mpiexec, mpicc and mpi.h) and a C compiler.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/build"}
mkdir -p "$out"
out=$(cd "$out" && pwd)

python "$here/model.py" --export "$out"            # libdp.so, dp.h, data.bin
ldd "$out/libdp.so"                                # libc only
mpicc -O2 -std=c11 -Wall -Wextra -I "$out" -o "$out/train" "$here/main.c" \
    -L "$out" -ldp -Wl,-rpath,"$out"
mpiexec -n 2 "$out/train" "$out"                   # weights_c.bin
mpiexec -n 2 python "$here/model.py" --train "$out"  # weights_py.bin
cmp "$out/weights_c.bin" "$out/weights_py.bin" && echo "C and Python weights are identical"
