"""Canonical attention: rewrite the attention of Hugging Face ``transformers`` exports (index-built padding mask,
SDPA's NaN guard and shape-restoring reshapes, split Q/K scale, tied Identity biases) into the classic BERT
form — plain MatMul → Add(mask) → Softmax → MatMul with static ranks.

The same rewrite ``transformer_fusion`` runs before ONNX Runtime's optimizer, as a pass of its own for the
compilers that need plain graphs: TVM 0.27's Relax importer compiles the canonical form of the TorchScript and
dynamo BERT exports, and fails on the originals. The result is checked against the original's outputs on
generated inputs (a padded row included) before it is used; a graph without that attention pattern is left
as it is, with the reason.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

import onnx

from chipfit.passes._attention import canonicalize
from chipfit.passes._graph import is_large
from chipfit.passes.base import PassContext, PassResult
from chipfit.passes.transformer_fusion import differs_from, is_transformer, sample_feeds

__all__ = ["AttentionCanonical", "pass_"]


class AttentionCanonical:
    name = "attention_canonical"
    params: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        if not is_transformer(src):
            return PassResult(False, ["attention_canonical: no attention (MatMul → Softmax → MatMul) in the graph"])
        model = onnx.load(str(src))
        notes = canonicalize(model)
        if not notes:
            return PassResult(False, ["attention_canonical: the attention is already in the canonical form"])
        with tempfile.TemporaryDirectory(prefix="chipfit-canon-") as tmp:
            out = Path(tmp) / "model.onnx"
            onnx.save_model(model, str(out), save_as_external_data=is_large(src), location="model.onnx.data")
            why = differs_from(src, out, sample_feeds(onnx.load(str(src), load_external_data=False)))
            if why:
                return PassResult(False, [f"attention_canonical: not used: {why}"])
        onnx.save_model(model, str(dst), save_as_external_data=is_large(src), location=f"{dst.name}.data")
        return PassResult(True, [f"attention_canonical: {'; '.join(notes)}"])


pass_ = AttentionCanonical()
