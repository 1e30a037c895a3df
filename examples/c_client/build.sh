#!/bin/sh
# Export the digits MLP as build/libmlp.so + build/mlp.h, build the C client against it,
# and run it on 16 test digits. Usage: examples/c_client/build.sh [BUILD_DIR]
# Needs: python with graphc installed (only for exporting), and a C compiler `cc`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/build"}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# 1. Export (the `graphc compile` command, run through the interpreter on PATH).
python -m graphc.cli compile "$here/model.py:mlp" --signature predict \
    -o "$out/libmlp.so"
python "$here/model.py" --write-input "$out/digits.npy"

# 2. Build the client: only the header and the library, no Python.
cc -O2 -std=c99 -Wall -Wextra -DMODEL=mlp -DMODEL_UP=MLP -I "$out" \
    -o "$out/mlp_client" "$here/main.c" -L "$out" -lmlp -Wl,-rpath,"$out"

# 3. Run: one line per image, "<predicted digit>\t<10 logits>".
"$out/mlp_client" "$out/digits.npy"
