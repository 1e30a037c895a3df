"""The model of the C generation example: a small character-level GPT, trained briefly on
the bundled Shakespeare excerpt, whose greedy decode step is exported for C.

    python examples/gpt_generate_c/model.py build/      # -> build/libgpt.so, build/gpt.h, ...

writes into the directory: ``libgpt.so`` + ``gpt.h`` (the decode step: token and position
in, next token out, KV caches in the library's context), ``vocab.txt`` (byte i is the
character of id i), ``prompt_ids.txt`` (the prompt as ids) and ``python_ids.txt`` (the ids
graphc's Generator produced in Python, which the C program must reproduce).

Training is a hand-written AdamW step on next-character cross-entropy (no gc.Model), a few
seconds by default (`--steps`).
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

import numpy as np

import graphc as gc

BATCH, STEPS_PER_EXAMPLE, MAX_LEN = 16, 64, 128


def text() -> str:
    """The bundled public-domain text (graphc/datasets/tiny_shakespeare.txt)."""
    return resources.files("graphc.datasets").joinpath("tiny_shakespeare.txt").read_text()


def vocabulary(corpus: str) -> str:
    """The characters of `corpus`, sorted: character i has id i."""
    return "".join(sorted(set(corpus)))


def encode(chars: str, s: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(chars)}
    return np.array([index[c] for c in s], np.int64)


def train(gpt: gc.nn.GPT, data: np.ndarray, steps: int, seed: int = 0) -> list[float]:
    """`steps` AdamW steps on random windows of `data`; returns the losses."""
    with gc.Graph("char_gpt") as g:
        x = gc.placeholder((BATCH, STEPS_PER_EXAMPLE), gc.int64, name="x")
        y = gc.placeholder((BATCH, STEPS_PER_EXAMPLE), gc.int64, name="y")
        logits = gpt(x, training=True)
        flat = gc.reshape(logits, (BATCH * STEPS_PER_EXAMPLE, gpt.vocab_size))
        loss = gc.mean(gc.softmax_cross_entropy(flat, gc.reshape(y, (-1,))), name="loss")
        updates = gc.optim.AdamW(3e-3, weight_decay=0.01).minimize(loss)
    step = gc.compile(g, [x, y], [loss], updates=updates)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        starts = rng.integers(0, len(data) - STEPS_PER_EXAMPLE - 1, BATCH)
        windows = np.stack([data[s:s + STEPS_PER_EXAMPLE + 1] for s in starts])
        losses.append(float(step(windows[:, :-1], windows[:, 1:])[0]))
    return losses


def build(steps: int = 200, seed: int = 0) -> tuple[gc.nn.Generator, str]:
    """A trained character GPT's greedy generator, and its vocabulary."""
    corpus = text()
    chars = vocabulary(corpus)
    gpt = gc.nn.GPT(len(chars), 64, 2, 4, 256, MAX_LEN, seed=seed)
    if steps:
        train(gpt, encode(chars, corpus), steps, seed)
    else:  # untrained: build the weights in a graph of their own
        with gc.Graph("char_gpt"):
            gpt(gc.placeholder((1, 1), gc.int64, name="x"))
    return gc.nn.Generator(gpt, max_len=MAX_LEN, temperature=0.0), chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the library and files")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--prompt", default="MENENIUS:\n", help="the prompt text")
    parser.add_argument("--new", type=int, default=80, help="tokens to generate")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    gen, chars = build(args.steps)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")
    gen.export(args.out / "libgpt.so")
    (args.out / "vocab.txt").write_bytes(chars.encode("ascii"))
    prompt = encode(chars, args.prompt)
    ids = gen.generate(prompt, args.new)[len(prompt):]
    (args.out / "prompt_ids.txt").write_text(" ".join(map(str, prompt)) + "\n")
    (args.out / "python_ids.txt").write_text(" ".join(map(str, ids)) + "\n")
    print("python:", repr("".join(chars[i] for i in ids)))


if __name__ == "__main__":
    main()
