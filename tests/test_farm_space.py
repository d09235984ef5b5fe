"""The farm's per-target candidate space without Ray: GPU candidates for a target whose nodes have the GPU, though
this machine has none (``SpaceOptions.remote_devices``), and what a node advertises (``runtime_devices``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chipfit.backends import available_backends, get_backend, runtime_devices
from chipfit.candidate import Candidate
from chipfit.farm.fit import runs_on
from chipfit.model import load_model
from chipfit.search.space import SpaceOptions, build_space

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits" / "model.onnx"


def _gpu_here(backend: str) -> bool:
    return "cuda" in get_backend(backend).capabilities.devices


def test_runtime_devices_names_each_backend_and_its_gpus() -> None:
    offered = runtime_devices()
    assert [b for b in offered if "-" not in b] == available_backends()
    for b in available_backends():
        assert (f"{b}-cuda" in offered) == _gpu_here(b)


def test_a_remote_gpu_gets_cuda_candidates_for_every_variant(tmp_path: Path) -> None:
    if _gpu_here("onnxruntime"):
        pytest.skip("this machine has ONNX Runtime's CUDA provider: the remote case is the local one")
    model = load_model(DIGITS, home=tmp_path)
    here = build_space(model, SpaceOptions(backends=("onnxruntime",), batch_sizes=(1, 8)), 2)
    cuda_here = [c for c in here if c.target == "cuda"]
    assert cuda_here and all(c.skip and "no NVIDIA GPU" in c.skip for c in cuda_here)  # listed once, with why

    farm = build_space(
        model, SpaceOptions(backends=("onnxruntime",), batch_sizes=(1, 8), remote_devices=("onnxruntime-cuda",)), 2
    )
    cuda = [c for c in farm if c.target == "cuda"]
    variants = {c.variant_key() for c in farm if c.target == "cpu" and not c.skip and not c.reference}
    assert cuda and all(c.skip is None and not c.option_sweep for c in cuda)
    assert {c.variant_key() for c in cuda if c.batch == 1} == variants  # every variant runs on the GPU node
    assert {c.batch for c in cuda} == {1, 8}
    assert all(runs_on(c) == "onnxruntime-cuda" for c in cuda)
    trt = [c for c in farm if c.target == "tensorrt"]
    assert trt and all(c.skip for c in trt)  # not offered by the nodes: still skipped with the reason


def test_torch_lists_its_gpu_options_with_the_reason(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if _gpu_here("torch"):
        pytest.skip("torch sees a CUDA GPU here")
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    model = load_model(net, (torch.zeros(2, 8),), home=tmp_path)
    cands = build_space(model, SpaceOptions(backends=("torch",), batch_sizes=(1,)), 2)
    gpu = [c for c in cands if c.backend == "torch" and c.target == "cuda"]
    assert gpu and all("no CUDA GPU visible to torch" in (c.skip or "") for c in gpu)
    remote = build_space(model, SpaceOptions(backends=("torch",), batch_sizes=(1,), remote_devices=("torch-cuda",)), 2)
    gpu = [c for c in remote if c.backend == "torch" and c.target == "cuda"]
    assert len(gpu) == 3 and all(c.skip is None for c in gpu)
    assert {c.options.get("autocast") for c in gpu} == {None, "bfloat16"}
    assert runs_on(Candidate("torch", (), {}, "cpu")) == "torch"
