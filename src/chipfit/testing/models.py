"""Small reference models built in code (no downloads): a BERT-like encoder, optionally with the outlier
channels pretrained transformers have, exported to ONNX the way a user's model would be.

Needs torch (``pip install 'chipfit[torch]'``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bert_inputs", "bert_like", "export_onnx"]


def bert_like(
    layers: int = 6,
    hidden: int = 384,
    heads: int = 12,
    ff: int | None = None,
    vocab: int = 1000,
    seq: int = 128,
    classes: int = 2,
    outliers: float = 0.0,
    seed: int = 0,
) -> Any:
    """A BERT-style encoder (embeddings + LayerNorm, ``layers`` × [self-attention, residual + LayerNorm, GELU
    feed-forward, residual + LayerNorm], a classifier on the first token, or with ``classes=0`` the first
    token's hidden state, a sentence embedding) with random weights.

    ``outliers`` > 0 scales a few hidden channels' LayerNorm gain and bias by that factor, as training does to
    pretrained transformers (the "outlier dimensions" that make per-tensor int8 activations lose precision), and
    divides the weights that read those channels by the same factor, as training compensates.
    """
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.f1, self.f2 = nn.Linear(hidden, ff or 4 * hidden), nn.Linear(ff or 4 * hidden, hidden)

        def split(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            return x.view(b, t, heads, hidden // heads).permute(0, 2, 1, 3)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hidden // heads) + mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
            x = self.ln1(x + self.o(ctx.view(ctx.shape[0], ctx.shape[1], hidden)))
            return self.ln2(x + self.f2(nn.functional.gelu(self.f1(x))))

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.pos, self.ln = nn.Embedding(vocab, hidden), nn.Embedding(seq, hidden), nn.LayerNorm(hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.cls = nn.Linear(hidden, classes) if classes else nn.Identity()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.ln(self.emb(input_ids) + self.pos(pos))
            mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
            for layer in self.layers:
                x = layer(x, mask)
            return self.cls(x[:, 0])

    torch.manual_seed(seed)
    model: Any = Bert().eval()
    if outliers > 0:
        gen = torch.Generator().manual_seed(seed + 1)
        channels = torch.randperm(hidden, generator=gen)[:3]
        with torch.no_grad():
            for ln in [model.ln] + [m for layer in model.layers for m in (layer.ln1, layer.ln2)]:
                ln.weight[channels] *= outliers
                ln.bias[channels] *= outliers
            # the layers reading those channels learned small weights for them: the information is unchanged,
            # only its scale is extreme, which is what breaks a per-tensor int8 activation scale
            for lin in [m for layer in model.layers for m in (layer.q, layer.k, layer.v, layer.f1)]:
                lin.weight[:, channels] /= outliers
            if classes:
                model.cls.weight[:, channels] /= outliers
    return model


def bert_inputs(n: int, seq: int = 128, vocab: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    lengths = rng.integers(seq // 2, seq + 1, size=n)
    for i, length in enumerate(lengths):
        mask[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export_onnx(model: Any, inputs: dict[str, np.ndarray], path: Path, opset: int = 17) -> Path:
    """Export with a dynamic batch dimension through torch.onnx's TorchScript exporter (the graph patterns ONNX
    Runtime's transformer optimizer matches; its dynamo exporter's attention pattern is not fused yet)."""
    import warnings

    import torch

    args = tuple(torch.from_numpy(v[:1]) for v in inputs.values())
    names = list(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path
