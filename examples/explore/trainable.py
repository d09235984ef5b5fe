"""A trainable for `chipfit explore`: an MLP on scikit-learn's digits, trained epoch by epoch, reporting
validation accuracy after each epoch and checkpointing so that a trial can resume.

The digits are split three ways: 60% train, 20% validation (what trials score and the search compares) and a
20% test split that no trial ever scores (`test_data`), so that a search's pick can be judged on digits it
never saw (benchmarks/asha.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def _splits() -> tuple[torch.Tensor, ...]:
    """Train / validation / test of digits, shuffled once with a fixed seed."""
    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx].astype(np.float32) / 16.0, y[idx].astype(np.int64)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return xt[:a], yt[:a], xt[a:b], yt[a:b], xt[b:], yt[b:]


def data() -> tuple[torch.Tensor, ...]:
    """Train / validation split of digits (the test split is held out: see `test_data`)."""
    return _splits()[:4]


def eval_data() -> dict[str, np.ndarray]:
    """The validation digits as `fit` data: the input `x` and `labels`."""
    _, _, xva, yva = data()
    return {"x": xva.numpy(), "labels": yva.numpy()}


def test_data() -> dict[str, np.ndarray]:
    """The test digits, which no trial scores: for judging the configuration a search picks."""
    xte, yte = _splits()[4:]
    return {"x": xte.numpy(), "labels": yte.numpy()}


def build(hidden: int, layers: int, activation: str) -> nn.Module:
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    mods: list[nn.Module] = []
    width = 64
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), act()]
        width = hidden
    return nn.Sequential(*mods, nn.Linear(width, 10))


def model(config: dict[str, Any]) -> nn.Module:
    """The untrained model of a configuration (deploy.model: checked against a hardware bound)."""
    return build(config["hidden"], config["layers"], config["activation"])


def train(ctx) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(ctx.number)  # ctx.threads cores: chipfit has set torch's thread count
    cfg = ctx.config
    weight_decay = ctx.suggest_float("weight_decay", 1e-6, 1e-2, log=True)  # define-by-run
    xtr, ytr, xva, yva = data()
    net = model(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=weight_decay)
    start = 0
    saved = ctx.load_checkpoint()
    if saved is not None:
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["epoch"]
    gen = torch.Generator().manual_seed(ctx.number)
    for epoch in range(start, ctx.max_resource):
        net.train()
        for batch in torch.randperm(len(xtr), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xtr[batch]), ytr[batch]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(xva).argmax(1) == yva).float().mean().item()
        ctx.checkpoint({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1})
        ctx.report(acc, epoch + 1, model=net)
    return net
