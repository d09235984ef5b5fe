"""The prose of BENCHMARKS.md, computed from the numbers of the run that writes it.

Pure functions of plain data (dicts, lists, numbers), standard library only, so that tests can feed them
made-up numbers without running a benchmark. Every statement here that names a number, a ratio, a range, a
comparison or a verdict formats it from its arguments; explanations that state no measured fact (how a
table was measured, what a pass does by design) may be fixed text.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# Goals: the thresholds that the verdicts compare the measured values with.
PRECISION_GOAL_SPEEDUP = 1.6  # chipfit's winner vs ONNX Runtime's default fp32 session, BERT-like encoder
PRECISION_GOAL_FIDELITY = 0.99  # cosine vs fp32 at which that speedup must hold
PREDICTOR_GOAL_WITHIN_10PCT = 0.90
PREDICTOR_GOAL_SPEARMAN = 0.95
PREDICTOR_GOAL_SHARE = 0.30  # guided search reaches the measured best after at most this share of the space
TRANSFORMER_GOAL_B1 = 2.5  # issue 16: chipfit's winner vs ORT's default fp32 session, pretrained MiniLM, batch 1
TRANSFORMER_GOAL_B8 = 1.5  # the same at batch 8
TRANSFORMER_GOAL_FIDELITY = 0.99
TIME_TO_ANSWER_GOAL_S = 90.0  # `chipfit fit --min-fidelity 0.99` on the encoder, fresh store
SERVING_GOAL_RATIO = 3.0  # adaptive batching vs --max-batch 1 on the wide MLP under wrk
SERVING_GOAL_OVERHEAD_MS = 1.0
SERVING_GOAL_SLO_HELD = 0.99  # share of admitted requests within the SLO by the server's histogram (a p99 SLO)
NEAR_BEST = 0.9  # backends within this fraction of the best share of the roof are named together
NEAR_ROOF = 0.7  # a share of the SGEMM roof from which "the roof, not the backend, is the limit"


def verdict(met: bool) -> str:
    return "reached" if met else "not reached"


def versus(r: Mapping[str, float]) -> str:
    """How an interleaved speedup (median and IQR of per-round ratios, > 1 = faster than the base) reads."""
    if r["speedup_q25"] > 1.0:
        return "faster"
    if r["speedup_q75"] < 1.0:
        return "slower"
    return "no clear difference (the IQR spans 1)"


def _x(r: Mapping[str, float]) -> str:
    return f"{r['speedup_median']:.2f}× ({r['speedup_q25']:.2f}–{r['speedup_q75']:.2f})"


def _range(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


# -- run.py: fit on the digits CNN ---------------------------------------------------------------------------


def fit_commentary(
    chosen_batch: int, objective: str, options: Any, backend: str, speedups: Mapping[int, Mapping[str, float]]
) -> list[str]:
    """``speedups``: per batch size, the winner's interleaved speedup over ONNX Runtime's default session."""
    text = (
        f"The winner ({backend}) was chosen for batch {chosen_batch} (objective `{objective}`) with runtime "
        f"options `{options}`."
    )
    for batch, r in sorted(speedups.items()):
        how = versus(r)
        text += f" At batch {batch} it runs at {_x(r)} ORT's default session: {how}."
        if batch != chosen_batch and how == "slower":
            text += (
                f" A configuration chosen for batch {chosen_batch} need not be the best at batch {batch}: `fit` "
                "measures each batch size as its own candidate, and `--objective throughput` picks for that."
            )
    return [text, ""]


# -- precision.py ------------------------------------------------------------------------------------------


def precision_goal(speedup: Mapping[str, float], fidelity: float) -> str:
    met = speedup["speedup_median"] >= PRECISION_GOAL_SPEEDUP and fidelity >= PRECISION_GOAL_FIDELITY
    return (
        f"Goal (≥{PRECISION_GOAL_SPEEDUP:g}× over ONNX Runtime's default fp32 session at cosine ≥ "
        f"{PRECISION_GOAL_FIDELITY:g}): **{verdict(met)}** — {speedup['speedup_median']:.2f}× at cosine "
        f"{fidelity:.4f}."
    )


def _has(c: Mapping[str, Any], prefix: str) -> bool:
    return any(n.startswith(prefix) for n in c["passes"])


def precision_commentary(runs: Sequence[Mapping[str, Any]], int8_dot: bool, isa: Sequence[str]) -> list[str]:
    """The reading of the precision sections. Each run: ``model`` (its name), ``quality_name``, ``winner``
    (``None`` or ``{"label", "passes": [pass names], "quality"}``), ``timing`` (``None`` or the interleaved
    results ``{"ort", "winner", "torch"}``), ``reference_p50`` (the unmodified model's p50 in fit, ms) and
    ``candidates`` (``{"label", "passes", "status", "p50_ms", "skip"}``, p50 from the probe where pruned).
    ``int8_dot``: ``chipfit.hardware.detect.cpu_features()["int8_dot"]``; ``isa``: the CPU's ISA flags."""
    out = ["## Reading the precision numbers", ""]
    for run in runs:
        w, t = run["winner"], run["timing"]
        if w is None:
            out.append(f"- {run['model']}: no candidate met the quality bound.")
            continue
        kind = "int8" if any(n.startswith("int8") for n in w["passes"]) else "fp32"
        if any(n.startswith(("fp16", "bf16")) for n in w["passes"]):
            kind = "reduced-precision float"
        text = f"- {run['model']}: the winner `{w['label']}` is {kind}, {run['quality_name']} {w['quality']:.5f}"
        if t is not None:
            text += f"; against ONNX Runtime's default fp32 session it is {_x(t['winner'])}: {versus(t['winner'])}"
        text += "."
        ref = run.get("reference_p50")
        for prefix, what in (("int8_static", "static (QDQ) int8"), ("int8_dynamic", "dynamic int8")):
            timed = [c for c in run["candidates"] if _has(c, prefix) and c["p50_ms"] is not None]
            if timed and ref:
                fastest = min(c["p50_ms"] for c in timed)
                rel = "slower" if fastest > ref else "faster"
                statuses = ", ".join(sorted({c["status"] for c in timed}))
                text += (
                    f" Its fastest {what} candidate took {fastest:.3g} ms in fit ({statuses}), {rel} than the "
                    f"unmodified model's {ref:.3g} ms."
                )
        skipped = sorted({c["skip"] for c in run["candidates"] if _has(c, "fp16") and c.get("skip")})
        if skipped:
            text += f" fp16 was not measured: {'; '.join(skipped)}."
        out.append(text)
    int8_wins = [
        r for r in runs if r["winner"] and r["timing"] and any(n.startswith("int8") for n in r["winner"]["passes"])
    ]
    if int8_wins:
        gains = _range([r["timing"]["winner"]["speedup_median"] for r in int8_wins], "{:.2f}")
        if int8_dot:
            text = "- This CPU has int8 dot-product instructions"
        elif "avx2" in isa:
            text = (
                "- This CPU has no int8 dot-product instructions (VNNI/AMX): ONNX Runtime's int8 GEMMs go through "
                "u8·s8 `vpmaddubsw` with reduced-range (7-bit) weights to avoid its int16 saturation"
            )
        else:
            text = "- This CPU has no int8 dot-product instructions"
        out.append(
            f"{text}; activations are quantized at run time, and softmax, LayerNorm and GELU stay fp32. The int8 "
            f"winners here gain {gains}× over ONNX Runtime's default fp32 session."
        )
    plain = next((r for r in runs if r.get("outliers") == 0 and r["winner"]), None)
    outl = next((r for r in runs if r.get("outliers") and r["winner"]), None)
    if plain and outl:
        out.append(
            f"- The outlier case scales a few LayerNorm channels ×{outl['outliers']:g} (and divides the weights "
            "that read them), as pretrained transformers have. The int8 passes quantize only nodes they can "
            "rank, weight-quantize per output channel and leave the classifier (a Gemm) fp32; the winner's "
            f"{outl['quality_name']} is {outl['winner']['quality']:.5f} with outliers and "
            f"{plain['winner']['quality']:.5f} without."
        )
    timed = [r for r in runs if r["timing"]]
    if timed:
        slowest = [r["model"] for r in timed if max(r["timing"], key=lambda k: r["timing"][k]["p50_ms"]) == "torch"]
        others = [r["model"] for r in timed if r["model"] not in slowest]
        text = (
            "- PyTorch eager (fp32, same weights, `inference_mode`) has the highest p50 of the three runners on "
            f"{len(slowest)} of {len(timed)} models"
        )
        text += f" (not on: {', '.join(others)})." if others else "."
        out.append(text)
    return [*out, ""]


# -- backends.py -------------------------------------------------------------------------------------------


def backends_commentary(models: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each model: ``title``, ``mflop`` and ``rows`` (``{"backend", "label", "p50": {batch: ms}, "best",
    "throughput", "pct"}``, ``pct`` the share of the SGEMM roof at the best batch, 0–100)."""
    out = ["#### Reading the backend numbers", ""]
    for m in models:
        rows = [r for r in m["rows"] if 1 in r["p50"]]
        if not rows:
            continue
        ort = next((r for r in rows if r["backend"] == "onnxruntime"), None)
        fastest = min(rows, key=lambda r: r["p50"][1])
        text = (
            f"- {m['title']} ({m['mflop']:.1f} MFLOP per sample): fastest at batch 1 is {fastest['backend']} "
            f"({fastest['label']}, {fastest['p50'][1]:.4g} ms)"
        )
        if ort is not None:
            slower = [
                f"{r['backend']} {r['label']} {r['p50'][1] / ort['p50'][1]:.1f}×"
                for r in sorted(rows, key=lambda r: r["p50"][1])
                if r is not ort
            ]
            if slower:
                text += f"; batch-1 p50 relative to ONNX Runtime's default session: {', '.join(slower)}"
        top = max(r["pct"] for r in rows)
        near = [r for r in rows if r["pct"] >= NEAR_BEST * top]
        names = ", ".join(f"{r['backend']} ({r['label']})" for r in near)
        text += (
            f". Highest share of the SGEMM roof: {_range([r['pct'] for r in near])}% ({names}, at batch "
            f"{_range([r['best'] for r in near])})"
        )
        if top >= 100 * NEAR_ROOF and len(near) > 1:
            text += "; several backends are that close to the measured roof: the roof, not the backend, is the limit"
        out.append(text + ".")
        tvm = [r for r in rows if r["backend"] == "tvm"]
        if tvm and ort is not None:
            parts = []
            for r in tvm:
                common = [b for b in r["p50"] if b in ort["p50"]]
                ahead = [b for b in common if r["p50"][b] <= ort["p50"][b]]
                ratio = r["p50"][r["best"]] / ort["p50"][r["best"]] if r["best"] in ort["p50"] else None
                p = f"{r['label']}: {r['pct']:.1f}% of the roof"
                if ratio is not None:
                    p += f", {ratio:.1f}× ONNX Runtime's p50 at batch {r['best']}"
                p += (
                    f", as fast as ONNX Runtime at batch {', '.join(map(str, ahead))}"
                    if ahead
                    else ", behind ONNX Runtime at every batch size measured"
                )
                parts.append(p)
            out.append(f"  TVM on {m['title']}: {'; '.join(parts)}.")
    return [*out, ""]


# -- predictor.py ------------------------------------------------------------------------------------------


def predictor_goal(within_10pct: float | None, spearman: float | None) -> str:
    """The held-out accuracy goal's verdicts, from the evaluation's pooled numbers."""
    within_s = "n/a" if within_10pct is None else f"{within_10pct:.0%}"
    sp_s = "n/a" if spearman is None else f"{spearman:.3f}"
    within_met = within_10pct is not None and within_10pct >= PREDICTOR_GOAL_WITHIN_10PCT
    sp_met = spearman is not None and spearman >= PREDICTOR_GOAL_SPEARMAN
    return (
        f"Goal: ≥ {PREDICTOR_GOAL_WITHIN_10PCT:.0%} within ±10% and Spearman ≥ {PREDICTOR_GOAL_SPEARMAN:g} on the "
        f"local machine: within ±10% **{verdict(within_met)}** ({within_s}), Spearman **{verdict(sp_met)}** "
        f"({sp_s})."
    )


def guided_goal(shares: Sequence[float]) -> str:
    """``shares``: per model, the share of its space a predictor-ordered search measured to reach the best."""
    if not shares:
        return "Guided search: no model measured."
    met = sum(s <= PREDICTOR_GOAL_SHARE for s in shares)
    return (
        f"Goal (measured best found after ≤ {PREDICTOR_GOAL_SHARE:.0%} of the space): met on {met} of "
        f"{len(shares)} models; median share {statistics.median(shares):.0%}."
    )


# -- asha.py -----------------------------------------------------------------------------------------------


def asha_commentary(runs: Mapping[str, Sequence[Mapping[str, Any]]], test_n: int) -> list[str]:
    """``runs``: per arm, one run per seed (same order in every arm); the first arm is random search at 100%,
    the second ASHA at 10%, any further ones other samplers/pruners at 10%. Each run has ``test`` (the test
    accuracy of the configuration it picked), ``best`` (its best validation accuracy) and ``complete``.
    ``test_n``: the number of test digits."""
    labels = list(runs)
    ref, asha, others = labels[0], labels[1], labels[2:]
    med = {k: statistics.median(r["test"] for r in runs[k]) for k in labels}
    wins = sum(a["test"] >= b["test"] for a, b in zip(runs[asha], runs[ref], strict=True))
    n = len(runs[ref])
    out = [
        f"Median test accuracy of the picked configuration: {asha} **{med[asha]:.4f}**, {ref} **{med[ref]:.4f}**; "
        f"{asha} ≥ {ref} in {wins} of {n} seeds. Goal ({asha} ≥ {ref} in the median, by test accuracy): "
        f"**{verdict(med[asha] >= med[ref])}**."
    ]
    if others:
        best = max(labels[1:], key=lambda k: (med[k], k == asha))
        rel = "≥" if med[best] >= med[ref] else "<"
        out += [
            "",
            "At 10% of the budget: "
            + ", ".join(f"{k} {med[k]:.4f}" for k in labels[1:])
            + f" (medians); the best of them is **{best}** ({med[best]:.4f} {rel} {ref}'s {med[ref]:.4f}).",
        ]
    spread = [r["test"] for r in runs[ref]]
    gap = {k: statistics.median(r["best"] - r["test"] for r in runs[k]) for k in labels}
    done = {k: statistics.median(r["complete"] for r in runs[k]) for k in (ref, asha)}
    out += [
        "",
        f"One test digit is {1 / test_n:.4f} of accuracy; {ref}'s picks range over {_range(spread, '{:.4f}')} "
        f"across seeds, so median differences of a digit or two are within the seed-to-seed noise. Validation "
        f"minus test accuracy of the pick, median per arm: "
        + ", ".join(f"{round(gap[k], 4) + 0.0:+.4f} ({k})" for k in labels)
        + f". A run's best validation score is the maximum of noisy scores on the same digits, so it favours "
        f"the run that trains more configurations to the end ({ref}: median {done[ref]:g}, {asha}: "
        f"{done[asha]:g}); the test split, which no trial scores, has no such bias, hence the verdict by test "
        f"accuracy.",
        "",
    ]
    return out


# -- transformer_rows.py ----------------------------------------------------------------------------------


def transformer_commentary(
    timing: Mapping[int, Mapping[str, Mapping[str, float]]],
    fidelity: Mapping[str, float],
    chipfit: str | None,
    optimum: str | None,
    fit_s: float,
) -> list[str]:
    """``timing``: per batch size, ``interleaved``'s result (the first runner is ORT's default session);
    ``fidelity``: cosine to fp32 per runner; ``chipfit``/``optimum``: their runner names (None when the run
    failed or was blocked); ``fit_s``: the wall time of `chipfit fit`."""
    if chipfit is None:
        return ["`chipfit fit` delivered no winner: the speedup goals are **not reached** (not measured)."]
    b1, b8, fid = timing[1][chipfit], timing[8][chipfit], fidelity[chipfit]
    ok = fid >= TRANSFORMER_GOAL_FIDELITY
    out = [
        f"Goal (≥ {TRANSFORMER_GOAL_B1:g}× over ORT's default fp32 session at cosine ≥ {TRANSFORMER_GOAL_FIDELITY:g}, "
        f"batch 1): **{verdict(ok and b1['speedup_median'] >= TRANSFORMER_GOAL_B1)}** ({_x(b1)}, cosine {fid:.4f}). "
        f"Batch 8 (≥ {TRANSFORMER_GOAL_B8:g}×): **{verdict(ok and b8['speedup_median'] >= TRANSFORMER_GOAL_B8)}** "
        f"({_x(b8)}). Time to answer (≤ {TIME_TO_ANSWER_GOAL_S:g} s): "
        f"**{verdict(fit_s <= TIME_TO_ANSWER_GOAL_S)}** ({fit_s:.0f} s)."
    ]
    if optimum is None:
        return [*out, "", "Optimum's row is blocked (above), so chipfit is not compared with it here."]
    for batch in (1, 8):
        c, o = timing[batch][chipfit], timing[batch][optimum]
        ratio = c["speedup_median"] / o["speedup_median"]
        if c["speedup_q25"] > o["speedup_q75"]:
            where = "ahead of"
        elif c["speedup_q75"] < o["speedup_q25"]:
            where = "behind"
        else:
            where = "level with (the IQRs overlap)"
        out += [
            "",
            f"Batch {batch}: chipfit's winner is {where} Optimum's avx512_vnni dynamic int8 "
            f"({_x(c)} vs {_x(o)} over ORT, ratio {ratio:.2f}; cosine {fid:.4f} vs {fidelity[optimum]:.4f}).",
        ]
    return out


# -- serving.py --------------------------------------------------------------------------------------------


def _rps(r: Mapping[str, Any] | None) -> float | None:
    return r["rps"] if r else None


def wrk_ratio(row: Mapping[str, Any]) -> float | None:
    a, o = _rps(row.get("adaptive_wrk")), _rps(row.get("one_wrk"))
    return a / o if a and o else None


def open_ratio(row: Mapping[str, Any]) -> float | None:
    a, o = row["adaptive_open"][0], row["one_open"][0]
    return a / o if a and o else None


def serving_goal(row: Mapping[str, Any], wrk_available: bool) -> str:
    head = f"Goal (≥ {SERVING_GOAL_RATIO:g}× on the {row['name']} under wrk): "
    if not wrk_available:
        return head + "not measured (wrk missing: apt-get install wrk)."
    ratio = wrk_ratio(row)
    if ratio is None:
        missing = [m for m, k in (("adaptive", "adaptive_wrk"), ("--max-batch 1", "one_wrk")) if not row.get(k)]
        return head + f"**not reached**: no connection count met the SLO for {' and '.join(missing)}."
    return head + f"**{verdict(ratio >= SERVING_GOAL_RATIO)}** ({ratio:.2f}×)."


def serving_commentary(rows: Sequence[Mapping[str, Any]], cores: int) -> list[str]:
    """Each row: ``name``, ``slo``, ``b1_p50``, ``batch_p50`` ({batch: ms in-process}), ``weights_mb``,
    ``adaptive_wrk``/``one_wrk`` (``None`` or ``{"rps", ...}``), ``adaptive_open``/``one_open`` ((rate, ...)),
    ``overhead_ms`` and ``low_load_p50`` (wrk at 1 connection, ms; ``None`` without wrk)."""
    out = [
        "#### Reading the serving numbers",
        "",
        f"- {cores} core{'s' if cores != 1 else ''} in the CPU quota run the server's event loop, the model's "
        "threads and the load generator. wrk (C) takes little of them and is the main measure; `chipfit "
        "loadtest` is Python on the same cores and measures each latency from the request's scheduled send time, "
        "so at high rates its own lateness counts: its rates and the 10× overload latencies are lower bounds on "
        "the server, not the server's limit.",
    ]
    ratios = {r["name"]: wrk_ratio(r) for r in rows}
    measured = {k: v for k, v in ratios.items() if v is not None}
    out.append("- What a batch costs in-process, and what adaptive batching gained under wrk (vs `--max-batch 1`):")
    for r in rows:
        b = r.get("batch_p50") or {}
        costs = [f"a batch of {k} costs {b[k] / b[1]:.1f}× one row" for k in sorted(b) if k != 1 and 1 in b]
        ratio = ratios[r["name"]]
        gain = f"wrk ratio {ratio:.2f}×" if ratio is not None else "no wrk ratio"
        out.append(f"  - {r['name']}: {r['weights_mb']:.1f} MB of weights; {', '.join([*costs, gain])}.")
    if len(measured) > 1:
        best = max(measured, key=lambda k: measured[k])
        out.append(f"- Of these, the {best} gains most from batching under wrk ({measured[best]:.2f}×).")
    disagree = []
    for r in rows:
        w, o = wrk_ratio(r), open_ratio(r)
        if w is not None and o is not None and (w - 1) * (o - 1) < 0:
            disagree.append(f"{r['name']} ({w:.2f}× under wrk, {o:.2f}× under loadtest)")
    if disagree:
        out.append(
            "- wrk and the open-loop `chipfit loadtest` disagree on which server is faster for "
            f"{'; '.join(disagree)}; the loadtest's p99 includes the Python generator's own lateness."
        )
    for r in rows:
        low = r.get("low_load_p50")
        if low is not None and r["slo"] < low:
            met = bool(r.get("adaptive_wrk") or r.get("one_wrk") or r["adaptive_open"][0] or r["one_open"][0])
            out.append(
                f"- The {r['name']}'s SLO ({r['slo']:.3g} ms, {r['slo'] / r['b1_p99']:.0f} × its batch-1 p99) is "
                f"shorter than its p50 over HTTP on loopback at low load ({low:.3g} ms); "
                + ("yet some rate met it." if met else "no rate meets it, with or without batching.")
            )
    over = [(r["name"], r["overhead_ms"]) for r in rows if r.get("overhead_ms") is not None]
    if over:
        ok = sum(v <= SERVING_GOAL_OVERHEAD_MS for _, v in over)
        out.append(
            f"- Server overhead (goal ≤ {SERVING_GOAL_OVERHEAD_MS:g} ms): within it on {ok} of {len(over)} models "
            f"({_range([v for _, v in over], '{:.3g}')} ms). ONNX Runtime's pool threads are told not to spin in "
            "the server (a spinning pool takes the event loop's core); whatever that costs against the in-process "
            "p50 is counted in this column."
        )
    return [*out, ""]


def slo_held_commentary(runs: Sequence[Mapping[str, Any]], slo_ms: float, cores: int) -> list[str]:
    """Each run: ``sent``, ``admitted`` and ``within`` (the server's histogram: requests answered 200, and of
    them those within the SLO), ``rejected``, ``client_p99`` (ms, the generator's), ``load`` (the 1-minute load
    average when the run started)."""
    shares = [r["within"] / r["admitted"] for r in runs if r["admitted"]]
    if not shares:
        return [f"SLO held: **not measured**: no request was admitted in {len(runs)} runs."]
    mid = statistics.median(shares)
    rejected = statistics.median([r["rejected"] / r["sent"] for r in runs if r["sent"]])
    out = [
        f"SLO held (goal ≥ {SERVING_GOAL_SLO_HELD:.0%} of admitted requests within the {slo_ms:g} ms SLO, by the "
        f"server's own histogram): **{verdict(mid >= SERVING_GOAL_SLO_HELD)}**: {mid:.1%} (median of "
        f"{len(shares)} runs, {_range([100 * v for v in shares], '{:.1f}')}%), with {rejected:.1%} of requests "
        "rejected (429) instead of served late.",
    ]
    client = [r["client_p99"] for r in runs if r.get("client_p99") is not None]
    if client:
        out.append(
            f"The generator's own p99 ({_range(client, '{:.3g}')} ms) also counts the time before the server reads "
            "a request, and its lateness: it is Python on the same cores, so the server's histogram is the measure."
        )
    loads = [r["load"] for r in runs if r.get("load") is not None]
    if mid < SERVING_GOAL_SLO_HELD and loads:
        busy = max(loads) > cores
        out.append(
            f"The machine's load average was {_range(loads, '{:.1f}')} on {cores} core{'s' if cores != 1 else ''} "
            + (
                "when the runs started: other processes held the cores, and a server descheduled for longer than "
                "its SLO makes every request in flight late — no admission rule sees that coming; the learned "
                "margin keeps fewer requests waiting, which is all it can do."
                if busy
                else "when the runs started: the misses are the server's own (event loop and model thread "
                "contending for the cores with the generator)."
            )
        )
    return out
