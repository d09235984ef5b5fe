"""Hardware commands of the CLI: ``chipfit targets`` (the catalogue) and ``chipfit compile`` (a module for
a catalogue target, cross-compiled and checked under qemu-user where possible)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from chipfit.cli.common import app, out_console, setup_logging, user_errors

CatalogOpt = Annotated[
    list[Path] | None,
    typer.Option("--catalog", help="Extra catalogue YAML file(s); their rows replace bundled ones by name."),
]


@app.command()
def targets(
    catalog: CatalogOpt = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind: cloud-cpu, cloud-gpu, edge-cpu, ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the targets as a JSON list on stdout.")] = False,
) -> None:
    """List the hardware catalogue: peak rates, memory, price and power of each target.

    Peak rates per dtype, memory bandwidth and capacity, $/hour (with the price's source and date) and power, each row
    with its source."""
    with user_errors():
        from chipfit.hardware.catalog import load_catalog

        rows = [t for t in load_catalog(catalog or ()).values() if kind is None or t.kind == kind]
        if json_out:
            sys.stdout.write(json.dumps([t.to_dict() for t in rows], indent=2) + "\n")
            return
        from rich.table import Table

        table = Table(title=f"chipfit hardware catalogue ({len(rows)} targets)")
        cols = ("target", "kind", "arch", "cores", "fp32 GFLOP/s", "fp16/bf16", "int8 GOP/s", "GB/s", "GB", "$/h", "W")
        for col in (*cols, "price date"):
            table.add_column(col, overflow="fold")
        for t in rows:
            half = max(t.peak("fp16"), t.peak("bf16"))
            table.add_row(
                t.name,
                t.kind,
                t.arch,
                str(t.cores),
                f"{t.peak('fp32'):,.0f}",
                f"{half:,.0f}" if half > t.peak("fp32") else "-",
                f"{t.peak('int8'):,.0f}" if "int8" in t.peak_gflops else "-",
                f"{t.mem_bw_gbs:g}",
                f"{t.memory_gb:g}",
                f"{t.usd_per_hour:.4g}" + ("*" if "years" in t.price.get("basis", "") else ""),
                f"{t.watts:g}",
                t.price.get("date", ""),
            )
        out_console.print(table)
        out_console.print("* edge devices: list price amortised over three years of continuous use.")


@app.command("compile")
def compile_cmd(
    model: Annotated[Path, typer.Argument(help="The model: an .onnx file or a .pt2 ExportedProgram.")],
    target: Annotated[str, typer.Option(help="A catalogue target (see `chipfit targets`), e.g. aws-c7g.xlarge.")],
    out: Annotated[Path, typer.Option(help="Folder for the artifact: model.onnx, model.so, manifest.json.")],
    backend: Annotated[str, typer.Option(help="The compiler; only tvm cross-compiles.")] = "tvm",
    batch: Annotated[int | None, typer.Option(help="Fix the batch size (default: keep a dynamic batch).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Inputs (.npz) for the correctness check; default: seeded random inputs.")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Run the module (under qemu-user for another arch) and compare with ONNX Runtime.")
    ] = True,
    catalog: CatalogOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr.")] = False,
) -> None:
    """Compile a model for a hardware target you may not have, such as a Raspberry Pi.

    Compiles for the target (e.g. Graviton or Raspberry Pi from x86) into a deployable folder that
    `chipfit.runtime.load` opens on the target. The module is checked against ONNX Runtime by running it here —
    natively, or under qemu-user with a sysroot (`make sysroot-aarch64`) — and the manifest says whether it was. Exit 1
    when the check fails."""
    setup_logging(quiet)
    with user_errors():
        from chipfit.crosscompile import compile_for_target

        result = compile_for_target(
            model, target, out, backend=backend, batch=batch, data=data, check=check, catalog=tuple(catalog or ())
        )
        if json_out:
            sys.stdout.write(json.dumps(result.manifest, indent=2, default=str) + "\n")
        else:
            c = result.check
            detail = (
                f"max relative error {c['max_rel_error']:.2e} on {c['samples']} samples, {c['how']}"
                if "max_rel_error" in c
                else c.get("reason", "")
            )
            colour = {"passed": "green", "failed": "red"}.get(c["status"], "yellow")
            out_console.print(f"compiled for [bold]{target}[/] with {backend} → {result.out}")
            out_console.print(f"check: [{colour}]{c['status']}[/] ({detail})", highlight=False)
        if not result.ok:
            raise typer.Exit(1)
