"""Built-in trainables for the trial types users ask for, named in the space file as ``trainable:``.

``chipfit:finetune`` — a provided backbone, frozen (or its last ``unfreeze`` layers trainable), with a new
head trained on the task::

    trainable: chipfit:finetune
    finetune: {data: trainable.py:data, backbone: backbone.pt}
    params: {lr: ..., head_hidden: ..., unfreeze: ...}       # each optional, defaults below

``chipfit:distill`` — a family of smaller students (``student:`` builds one from the config) trained on the
labels and on the teacher's softened outputs: loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE::

    trainable: chipfit:distill
    distill:
      data: trainable.py:data
      teacher: teacher.pt      # a model file, or {checkpoint: c.pkl, model: trainable.py:model, config: {...}}
      student: trainable.py:model
    params: {temperature: ..., alpha: ..., lr: ...}

``data`` returns ``(x_train, y_train, x_val, y_val)`` (arrays or tensors, integer class labels). Model files
are ``torch.export`` programs (``.pt2``), TorchScript, or ``torch.save(module)`` pickles (these only with
``--trust-pickle``: unpickling runs code from the file); a teacher checkpoint is loaded with ``weights_only``.
Both recipes train epoch by epoch up to the resource, report validation accuracy, checkpoint, and resume from
the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["distill", "finetune", "load_module"]


def load_module(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """A torch module from a file: ``.pt2`` (torch.export, checked like fit's: one that holds pickles or code is
    refused), TorchScript, or a pickled ``nn.Module`` (``torch.save(module)``), which is loaded only with
    ``trust_pickle`` since unpickling it runs code from the file."""
    import torch

    from chipfit.errors import SpecError
    from chipfit.torch_export import TRUST_HINT, load_exported_program

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"Model file '{p}' does not exist. Save one with torch.export.save or torch.jit.save.")
    if p.suffix == ".pt2":
        return load_exported_program(p, trust_pickle=trust_pickle).module()
    try:
        return torch.jit.load(str(p))
    except RuntimeError:
        if not trust_pickle:
            raise SpecError(
                f"Model file '{p}' is refused: it is not TorchScript or a torch.export program, so it is a pickle "
                "(torch.save(module)), and unpickling it runs code from the file. Save the module with "
                f"torch.export.save (.pt2) or torch.jit.save instead. {TRUST_HINT}"
            ) from None
        module = torch.load(str(p), weights_only=False)  # the user trusts the file: a pickled module
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"'{p}' holds a {type(module).__name__}, not a torch.nn.Module. Save the module itself.")
    return module


def _section(ctx: Any, name: str) -> dict[str, Any]:
    return dict(ctx.space.extra[name])


def _tensors(ctx: Any, ref: str) -> tuple[Any, ...]:
    import torch

    parts = ctx.resolve(ref)()
    return tuple(torch.as_tensor(a) for a in parts)


def _epochs(ctx: Any, model: Any, params: list[Any], loss_fn: Any, data: tuple[Any, ...]) -> Any:
    """The shared loop: Adam on ``params``, batches of ``batch_size``, report accuracy, checkpoint, resume. With
    ``--train-memory-mb`` the steps run under a remat plan where the step does not fit (``ctx.remat``); the
    model itself (evaluated, checkpointed, exported) is the same module with the same parameters."""
    import torch

    xtr, ytr, xva, yva = data
    cfg = ctx.config
    bs = int(cfg.get("batch_size", 64))
    y0 = ytr[:bs]
    runner = ctx.remat(model, xtr[:bs], loss_fn=lambda out: torch.nn.functional.cross_entropy(out, y0[: len(out)]))
    opt = torch.optim.Adam(params, lr=float(cfg.get("lr", 1e-3)), weight_decay=float(cfg.get("weight_decay", 0.0)))
    start = 0
    saved = ctx.load_checkpoint()
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["epoch"]
    gen = torch.Generator().manual_seed(ctx.number)
    for epoch in range(start, ctx.max_resource):
        model.train()
        for idx in torch.randperm(len(xtr), generator=gen).split(bs):
            opt.zero_grad()
            loss_fn(runner, xtr[idx], ytr[idx], idx).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xva).argmax(1) == yva).float().mean().item()
        ctx.checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1})
        ctx.report(acc, epoch + 1, model=model)
    return model


def finetune(ctx: Any) -> Any:
    """Freeze the backbone (all but its last ``unfreeze`` parameterised layers) and train a new head."""
    import torch
    from torch import nn

    sec = _section(ctx, "finetune")
    torch.manual_seed(ctx.number)
    data = _tensors(ctx, sec["data"])
    backbone = load_module(ctx.space.path.parent / sec["backbone"], trust_pickle=ctx.job.trust_pickle)
    for p in backbone.parameters():
        p.requires_grad_(False)
    unfreeze = int(ctx.config.get("unfreeze", sec.get("unfreeze", 0)))
    if unfreeze:
        layers = [m for m in backbone.modules() if any(True for _ in m.parameters(recurse=False))]
        for m in layers[-unfreeze:]:
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    with torch.no_grad():
        width = backbone(data[0][:2]).reshape(2, -1).shape[1]
    classes = int(data[1].max()) + 1
    hidden = int(ctx.config.get("head_hidden", sec.get("head_hidden", 0)))
    head = (
        nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        if hidden
        else nn.Sequential(nn.Flatten(), nn.Linear(width, classes))
    )
    model = nn.Sequential(backbone, head)

    def loss(m: Any, x: Any, y: Any, _: Any) -> Any:
        return nn.functional.cross_entropy(m(x), y)

    return _epochs(ctx, model, [p for p in model.parameters() if p.requires_grad], loss, data)


def _teacher(ctx: Any, spec: Any) -> Any:
    from chipfit.errors import SpecError
    from chipfit.explore.checkpoint import read_checkpoint

    if isinstance(spec, str):
        return load_module(ctx.space.path.parent / spec, trust_pickle=ctx.job.trust_pickle)
    if not isinstance(spec, dict) or not {"checkpoint", "model"} <= set(spec):
        raise SpecError(
            f"'distill.teacher' in {ctx.space.path} must be a model file or {{checkpoint: c.pkl, model: "
            "file.py:function, config: {...}}."
        )
    module = ctx.resolve(spec["model"])(dict(spec.get("config") or {}))
    path = ctx.space.path.parent / spec["checkpoint"]
    state = read_checkpoint(path, trust_pickle=ctx.job.trust_pickle)  # a trial's checkpoint, or torch.save(...)
    module.load_state_dict(state["model"] if isinstance(state, dict) and "model" in state else state)
    return module


def distill(ctx: Any) -> Any:
    """Train a student on the labels and the teacher's outputs softened by ``temperature`` (weight ``alpha``)."""
    import torch
    from torch import nn

    sec = _section(ctx, "distill")
    torch.manual_seed(ctx.number)
    data = _tensors(ctx, sec["data"])
    teacher = _teacher(ctx, sec["teacher"]).eval()
    with torch.no_grad():
        soft_targets = teacher(data[0])  # once per trial: the teacher's logits on the training set
    temperature = float(ctx.config.get("temperature", sec.get("temperature", 4.0)))
    alpha = float(ctx.config.get("alpha", sec.get("alpha", 0.5)))
    student = ctx.resolve(sec["student"])(ctx.config)

    def loss(m: Any, x: Any, y: Any, idx: Any) -> Any:
        logits = m(x)
        kd = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, dim=1),
            nn.functional.log_softmax(soft_targets[idx] / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        return alpha * temperature**2 * kd + (1 - alpha) * nn.functional.cross_entropy(logits, y)

    return _epochs(ctx, student, list(student.parameters()), loss, data)
