#!/usr/bin/env python3
"""Independent reference for the Rust all-MiniLM-L6-v2 provider (jobs/tests/minilm.rs).

A plain numpy BERT forward pass over the same model.safetensors, tokenised by the `tokenizers`
PyPI package from the same tokenizer.json, then mean pooling over the attention mask and L2
normalisation, as sentence-transformers does. No torch, no candle: nothing shared with the
Rust code but the files.

    python3 minilm_reference.py MODEL_DIR < sentences.json > embeddings.json

stdin: a JSON array of strings; stdout: a JSON array of 384-float arrays.
"""

import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_TOKENS = 256


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), vectorised: math.erf per element is slow.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def gelu(x):
    # The exact (erf) GELU of BERT's "gelu".
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(w, cfg, ids):
    n = len(ids)
    h = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    ).astype(np.float64)
    eps = cfg["layer_norm_eps"]
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(x, name):
            return x @ w[p + name + ".weight"].T.astype(np.float64) + w[p + name + ".bias"]

        q = lin(h, "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(h, "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
        v = lin(h, "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
        a = lin(ctx, "attention.output.dense")
        h = layer_norm(
            a + h,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        f = lin(gelu(lin(h, "intermediate.dense")), "output.dense")
        h = layer_norm(f + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    # One sentence at a time, so every token is real: the mean is over all of them.
    m = h.mean(0)
    return m / np.linalg.norm(m)


def main():
    model_dir = sys.argv[1]
    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    w = load_file(f"{model_dir}/model.safetensors")
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_truncation()
    tok.no_padding()
    out = []
    for text in json.load(sys.stdin):
        ids = tok.encode(text).ids
        if len(ids) > MAX_TOKENS:
            sys.exit(f"reference: a sentence of {len(ids)} tokens is longer than {MAX_TOKENS}")
        out.append([float(x) for x in encode(w, cfg, ids)])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
