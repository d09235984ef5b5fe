"""Predictor-guided search: candidates are measured in order of predicted promise within each stage of the
search (so the latency probe's bar is low early and more of the rest is pruned), and a candidate predicted
to miss a latency bound by a wide margin is skipped, listed with its prediction.

The predictor is trained on the store's measurements when ``fit`` starts; with fewer than its minimum it
only orders (the untrained roofline is not trusted to skip anything).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chipfit.search.space import Candidate
from chipfit.spec import Spec

__all__ = ["Guide", "make_guide"]

log = logging.getLogger("chipfit")
SKIP_MARGIN = 3.0  # skip only when the prediction is this many times the bound (or more, for a poor predictor)


@dataclass
class Guide:
    predict: Callable[[Candidate], Any]  # -> Prediction
    trained: bool
    rel_error: float

    def order(self, candidates: list[Candidate]) -> list[Candidate]:
        """Stable sort by predicted p50 within runs of the same stage (batch, option sweep); reference first."""
        out: list[Candidate] = []
        run: list[Candidate] = []

        def flush() -> None:
            run.sort(key=lambda c: self.predict(c).p50_ms)
            out.extend(run)
            run.clear()

        for c in candidates:
            if c.reference:
                flush()
                out.append(c)
                continue
            if run and (run[0].batch, run[0].option_sweep) != (c.batch, c.option_sweep):
                flush()
            run.append(c)
        flush()
        return out

    def skip_reason(self, c: Candidate, spec: Spec | None) -> str | None:
        if not self.trained or spec is None or c.reference:
            return None
        p = self.predict(c)
        margin = max(SKIP_MARGIN, 1 + 3 * self.rel_error) if math.isfinite(self.rel_error) else math.inf
        for name, value in (("max_p50_ms", p.p50_ms), ("max_p99_ms", p.p99_ms)):
            bound = getattr(spec, name)
            if bound is not None and value > bound * margin:
                return f"predicted {name[4:7]} {value:.3g} ms > {margin:.1f} × the bound {bound:g} ms (not measured)"
        return None


def make_guide(model_info: dict[str, Any], store: Any) -> Guide | None:
    """Train the predictor on the store and return the guide for this model on this machine."""
    from chipfit.hardware.local import local_target
    from chipfit.predict import Predictor, training_rows

    try:
        target = local_target()[0]
        rows = training_rows(store, target)
        predictor = Predictor().fit(rows)
    except Exception as exc:  # guidance is an optimisation: without it the search measures in space order
        log.warning("predictor unavailable, measuring in space order: %s", exc)
        return None
    models = {r["model_hash"] for r in rows}
    if len(models) >= 2:  # a held-out error needs other models; with one, the correction is not trusted to skip
        from chipfit.predict import predict_eval

        rel = predict_eval(rows).get("median_ape") or math.inf
    else:
        rel = math.inf
    cache: dict[str, Any] = {}

    def predict(c: Candidate) -> Any:
        if c.id not in cache:
            cache[c.id] = predictor.predict(model_info, c.to_dict(), target)
        return cache[c.id]

    return Guide(predict, predictor._gbm is not None and math.isfinite(rel), rel)
