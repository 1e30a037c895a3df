"""Train a character-level GPT on a Shakespeare excerpt and generate text from it.

    python examples/train_char_gpt.py                   # under a minute on 2 cores
    python examples/train_char_gpt.py --epochs 20 --d-model 256 --layers 4   # longer

The text (65 KB of Coriolanus, public domain) ships with graphc as
``graphc/datasets/tiny_shakespeare.txt``. Its characters are the vocabulary; the first 90%
trains and the last 10% validates. Examples are windows of `--steps` characters and the
targets are the same windows shifted by one (next-character prediction). The model is
`gc.nn.GPT` (pre-norm causal transformer layers), trained by `gc.Model.fit` with AdamW;
each epoch prints its loss, the validation loss and the training speed in tokens/s
(compilation happens in the first epoch). A unigram model — the best predictor that ignores
context — cannot get below the text's character entropy (printed first); the GPT should
get well below it. Finally `gc.nn.Generator` (KV cache, compiled once) samples a
continuation of a prompt.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from typing import Any

import numpy as np

import graphc as gc


def load_text() -> str:
    return resources.files("graphc.datasets").joinpath("tiny_shakespeare.txt").read_text()


def unigram_entropy(ids: np.ndarray) -> float:
    """The entropy (nats per character) of the characters' frequencies: the lowest mean
    cross-entropy a model that ignores context can reach on this text."""
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def windows(ids: np.ndarray, steps: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, steps) and next-character targets (n, steps) of windows every `stride`."""
    starts = np.arange(0, len(ids) - steps - 1, stride)
    index = starts[:, None] + np.arange(steps + 1)[None, :]
    chunks = ids[index]
    return chunks[:, :-1], chunks[:, 1:]


def run(epochs: int = 8, d_model: int = 128, layers: int = 2, heads: int = 4,
        steps: int = 128, batch_size: int = 16, stride: int = 64, lr: float = 4e-3,
        sample_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 10,
        prompt: str = "MENENIUS:\n", seed: int = 0, verbose: int = 1) -> dict[str, Any]:
    """Train and sample; returns the losses per epoch, the unigram entropy, tokens/s and
    the sample."""
    text = load_text()
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], np.int64)
    split = int(0.9 * len(ids))
    x, y = windows(ids[:split], steps, stride)
    vx, vy = windows(ids[split:], steps, steps)
    entropy = unigram_entropy(ids[:split])
    say = print if verbose else (lambda *a, **k: None)
    say(f"{len(text)} characters, vocabulary {len(chars)}, {len(x)} training windows of "
        f"{steps}; unigram entropy {entropy:.3f} nats/char")

    gpt = gc.nn.GPT(len(chars), d_model, layers, heads, 4 * d_model, steps, seed=seed)
    model = gc.Model(gpt, input_shape=(steps,), input_dtype="int64",
                     loss="sparse_categorical_crossentropy",
                     optimizer=gc.optim.AdamW(lr, weight_decay=0.01), metrics=[])
    losses, val_losses, speeds = [], [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0,
                            seed=seed + epoch)
        seconds = time.perf_counter() - start
        losses.append(history.history["loss"][-1])
        val_losses.append(model.evaluate(vx, vy, batch_size=batch_size)["loss"])
        speeds.append(len(x) // batch_size * batch_size * steps / seconds)
        say(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}, val_loss "
            f"{val_losses[-1]:.3f}, {speeds[-1]:,.0f} tokens/s"
            + (" (includes compiling)" if epoch == 0 else ""))

    generator = gc.nn.Generator(gpt, max_len=steps, temperature=temperature, top_k=top_k,
                                seed=seed)
    prompt_ids = np.array([index[c] for c in prompt], np.int64)
    # Learned positions end at the training context: sample within it.
    new = min(sample_tokens, steps - len(prompt_ids) + 1)
    generator.generate(prompt_ids, 2)  # compiles the prefill and decode steps, once
    start = time.perf_counter()
    out = generator.generate(prompt_ids, new)
    seconds = time.perf_counter() - start
    sample = "".join(chars[i] for i in out)
    say(f"--- sample ({new} tokens, {new / seconds:,.0f} tokens/s) ---")
    say(sample)
    return {"loss": losses, "val_loss": val_losses, "unigram_entropy": entropy,
            "tokens_per_second": speeds[-1] if speeds else 0.0, "sample": sample,
            "generated": out[len(prompt_ids):]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=128,
                        help="context length (characters)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--prompt", default="MENENIUS:\n")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.epochs, args.d_model, args.layers, args.heads, args.steps, args.batch_size,
        lr=args.lr, temperature=args.temperature, top_k=args.top_k, prompt=args.prompt,
        seed=args.seed)


if __name__ == "__main__":
    main()
