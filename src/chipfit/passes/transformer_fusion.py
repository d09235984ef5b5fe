"""Transformer fusion: ONNX Runtime's transformer optimizer rewrites attention, LayerNorm (with the residual
Add: SkipLayerNormalization), GELU (+ bias) and embedding subgraphs into single fused kernels.

Detected, not asked for: the pass applies when the graph has attention (a Softmax between two MatMuls, or an
already fused attention op) and does not apply otherwise. Heads and hidden size are detected from the graph.
If nothing could be fused (an attention pattern the optimizer does not know), the pass does not apply and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from chipfit.passes._graph import attention_softmaxes, is_large, load_graph
from chipfit.passes.base import PassContext, PassResult

__all__ = ["TransformerFusion", "is_transformer", "pass_"]


def is_transformer(path: Path) -> bool:
    return attention_softmaxes(load_graph(path)) > 0


class TransformerFusion:
    name = "transformer_fusion"
    params: ClassVar[dict[str, tuple[Any, ...]]] = {"model_type": ("bert", "gpt2", "bart", "t5", "vit")}

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        import logging

        from onnxruntime.transformers.optimizer import optimize_model

        model_type = params.get("model_type", "bert")
        if model_type not in self.params["model_type"]:
            raise ValueError(f"transformer_fusion: model_type must be one of {self.params['model_type']}")
        if not is_transformer(src):
            return PassResult(False, ["transformer_fusion: no attention (MatMul → Softmax → MatMul) in the graph"])
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        optimized = optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0)
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        if not fused:
            return PassResult(False, ["transformer_fusion: the optimizer found no subgraph it could fuse"])
        optimized.save_model_to_file(str(dst), use_external_data_format=is_large(src))
        text = ", ".join(f"{k}×{v}" for k, v in sorted(fused.items()))
        notes = [f"transformer fusion ({model_type}): {text}"]
        if not any(k in fused for k in ("Attention", "MultiHeadAttention")):
            notes.append("attention itself was not fused (an export pattern the optimizer does not match)")
        return PassResult(True, notes)


pass_ = TransformerFusion()
