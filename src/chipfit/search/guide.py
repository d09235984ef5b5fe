"""Predictor-guided search: candidates are measured in order of predicted promise within each stage of the
search (so the latency probe's bar is low early and more of the rest is pruned), and a candidate predicted
to miss a latency bound by a wide margin is skipped, listed with its prediction.

The predictor is trained on the store's measurements when ``fit`` starts; with fewer than its minimum it
only orders (the untrained roofline is not trusted to skip anything). When ``chipfit predict calibrate`` has
measured this machine, ONNX Runtime CPU candidates at the first batch size are predicted from their kernels
instead, and with a latency or throughput objective a candidate predicted slower than the best feasible one
measured so far by more than the kernel predictor's error margin is skipped (not measured), with its
prediction.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chipfit.search.space import Candidate
from chipfit.spec import Spec

__all__ = ["Guide", "make_guide"]

log = logging.getLogger("chipfit")
SKIP_MARGIN = 3.0  # skip only when the prediction is this many times the bound (or more, for a poor predictor)
FAR_MARGIN = 1.5  # kernel-level: skip when predicted this many times slower than the best measured (or more)
_RANKED = ("latency", "throughput")  # objectives that rank by p50 at one batch size


@dataclass
class Guide:
    predict: Callable[[Candidate], Any]  # -> Prediction
    trained: bool
    rel_error: float
    kernel: Any = None  # a LocalKernelPredictor when this machine is calibrated
    first_batch: int = 1
    scale: float = 1.0  # the store predictor's numbers times this: on the kernel-level scale

    def kernel_ms(self, c: Candidate) -> float | None:
        """The kernel-level prediction of ``c`` (ONNX Runtime on the CPU, this machine calibrated), else None."""
        if self.kernel is None or c.reference or c.skip:  # a candidate never measured is not built to predict it
            return None
        return self.kernel.predict_ms(c.to_dict())

    def promise(self, c: Candidate) -> float:
        """What candidates are ordered by: the kernel-level prediction when there is one, else the predictor's."""
        k = self.kernel_ms(c) if c.batch == self.first_batch else None  # other batches: only to skip, lazily
        return k if k is not None else float(self.predict(c).p50_ms) * self.scale

    def _rescale(self, candidates: list[Candidate]) -> None:
        """Put the store predictor's numbers on the kernel-level scale (the median ratio over the candidates both
        predict), so that candidates predicted by either are ordered together."""
        if self.kernel is None:
            return
        pairs = [(self.kernel_ms(c), float(self.predict(c).p50_ms)) for c in candidates if c.batch == self.first_batch]
        ratios = [k / o for k, o in pairs if k is not None and o > 0]
        self.scale = statistics.median(ratios) if ratios else 1.0

    def order(self, candidates: list[Candidate]) -> list[Candidate]:
        """Stable sort by predicted p50 within runs of the same stage (batch, option sweep); reference first."""
        t0 = time.monotonic()
        self._rescale([c for c in candidates if not c.reference])
        if self.kernel is not None:
            log.info("kernel-level predictions of the candidates took %.1fs", time.monotonic() - t0)
        out: list[Candidate] = []
        run: list[Candidate] = []

        def flush() -> None:
            run.sort(key=self.promise)
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

    def _far(self, c: Candidate, spec: Spec, feasible: Sequence[Any]) -> str | None:
        """With a latency objective the winner is the lowest p50 at any batch, with throughput the highest
        batch/p50: a kernel-level prediction beyond the best measured by the margin cannot win. Predictions are
        first scaled by the median measured / predicted p50 of this run's candidates measured so far."""
        if self.kernel is None or spec.objective not in _RANKED:
            return None
        done = [(r.candidate.batch, r.metric("p50_ms")) for r in feasible if r.metric("p50_ms")]
        if not done:
            return None
        k = self.kernel_ms(c)
        if k is None:
            return None
        # this run's measured / predicted: the machine's load now, and any bias of the calibration, cancel out
        seen = [r.metric("p50_ms") / r.metric("predicted_p50_ms") for r in feasible if r.metric("predicted_p50_ms")]
        k *= statistics.median(seen) if seen else 1.0
        m = self.far_margin()
        if spec.objective == "latency":
            best = min(p for _, p in done)
            if k > best * m:
                return f"{c.label()}: predicted p50 {k:.3g} ms (kernel-level) > {m:.2f} × the best measured " + (
                    f"{best:.3g} ms (not measured)"
                )
            return None
        best_thr = max(b / p * 1e3 for b, p in done)
        thr = c.batch / k * 1e3
        if thr * m < best_thr:
            return (
                f"{c.label()}: predicted throughput {thr:.3g}/s (kernel-level) < the best measured "
                f"{best_thr:.3g}/s / {m:.2f} "
                "(not measured)"
            )
        return None

    def far_margin(self) -> float:
        return max(FAR_MARGIN, 1 + 3 * self.kernel.rel_error) if self.kernel is not None else math.inf

    def skip_reason(self, c: Candidate, spec: Spec | None, feasible: Sequence[Any] = ()) -> str | None:
        """Why ``c`` is not measured, or None. ``feasible``: the feasible results measured so far."""
        if spec is None or c.reference:
            return None
        far = self._far(c, spec, feasible)
        if far is not None:
            return far
        if not self.trained:
            return None
        p = self.predict(c)
        margin = max(SKIP_MARGIN, 1 + 3 * self.rel_error) if math.isfinite(self.rel_error) else math.inf
        for name, value in (("max_p50_ms", p.p50_ms), ("max_p99_ms", p.p99_ms)):
            bound = getattr(spec, name)
            if bound is not None and value > bound * margin:
                return f"predicted {name[4:7]} {value:.3g} ms > {margin:.1f} × the bound {bound:g} ms (not measured)"
        return None


def make_guide(
    model_info: dict[str, Any], store: Any, kernel_ctx: Any = None, sample: Any = None, first_batch: int = 1
) -> Guide | None:
    """Train the predictor on the store and return the guide for this model on this machine. With
    ``kernel_ctx`` (the search context) and ``sample`` (one row of each input), ONNX Runtime CPU candidates are
    predicted from their kernels when this machine is calibrated (``chipfit predict calibrate``)."""
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

    kernel = local_kernel_predictor(kernel_ctx, sample) if kernel_ctx is not None and sample is not None else None
    return Guide(predict, predictor.trained and math.isfinite(rel), rel, kernel, first_batch)


def local_kernel_predictor(ctx: Any, sample: Any) -> Any:
    """The kernel-level predictor for the search context's model, or None when this machine is not calibrated."""
    from chipfit.predict.calibrate import heldout_error, load_calibration, train
    from chipfit.predict.local import LocalKernelPredictor

    home = ctx.variants_dir.parent
    try:
        data = load_calibration(home)
        if data is None:
            return None
        return LocalKernelPredictor(
            train(data),
            ctx.model_path,
            ctx.model_sha256,
            ctx.variants_dir,
            ctx.pass_context(),
            sample,
            ctx.dynamic_batch,
            ctx.threads,
            heldout_error(data),
        )
    except Exception as exc:  # guidance is an optimisation
        log.warning("kernel-level predictor unavailable: %s", exc)
        return None
