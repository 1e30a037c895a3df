#!/bin/sh
# Train a small character GPT for a few seconds, export its decode step as
# build/libgpt.so + build/gpt.h, build the C generator against it, generate, and compare
# with the ids Python generated. Usage: examples/gpt_generate_c/build.sh [BUILD_DIR]
# Needs: python with graphc installed (only for training and exporting), and `cc`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/build"}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# 1. Train and export (writes libgpt.so, gpt.h, vocab.txt, prompt_ids.txt, python_ids.txt).
python "$here/model.py" "$out"

# 2. Build the generator: only the header and the library, no Python.
cc -O2 -std=c99 -Wall -Wextra -I "$out" -o "$out/gpt_generate" "$here/main.c" \
    -L "$out" -lgpt -Wl,-rpath,"$out"

# 3. Generate as many tokens as Python did, from the same prompt.
n=$(wc -w < "$out/python_ids.txt")
# shellcheck disable=SC2046
"$out/gpt_generate" -v "$out/vocab.txt" "$n" $(cat "$out/prompt_ids.txt") > "$out/c_out.txt"
cat "$out/c_out.txt"
if [ "$(head -n 1 "$out/c_out.txt")" = "$(cat "$out/python_ids.txt")" ]; then
    echo "C ids == Python ids"
else
    echo "C ids differ from Python ids" >&2
    exit 1
fi
