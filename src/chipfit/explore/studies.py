"""The Optuna study behind ``chipfit explore``, through Optuna's public API only: opening (or resuming) it,
finding a trial by its number, and reading its trials back as the run's winner and history.

A space file's studies are named after its hash: ``explore-<hash>``, then ``explore-<hash>-2``, ``-3``... for
each ``--new-study``; a plain run resumes the newest. What a study needs beyond its database rows (checkpoints,
exported models, the deployment data) lives in its own folder under ``$CHIPFIT_HOME/explore/``, not in a
run's ``--out``, so a resumed study never depends on a folder that may be gone."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from chipfit.explore.space import ExploreSpace

__all__ = [
    "history",
    "open_storage",
    "open_study",
    "pruner",
    "reopen_trial",
    "sampler",
    "study_folder",
    "study_name",
    "trial_state",
    "winner",
]

log = logging.getLogger("chipfit")
INTERRUPTED = "interrupted (the run was killed); resumed"


def open_storage(url: str, created: bool = False) -> Any:
    """Optuna's storage on ``url``; ``created``: the driver already made and checked its tables (a trial's
    process then skips that: a tenth of a second per trial)."""
    import optuna

    # SQLite: wait up to 30 s for another writer's lock (the driver, the trials and the results store share the
    # file), as the results store does; the driver's default of 5 s failed trials on a loaded machine's slow fsyncs
    engine = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(
        url, engine_kwargs=engine, skip_compatibility_check=created, skip_table_creation=created
    )


def pruner(space: ExploreSpace, prune: bool) -> Any:
    import optuna

    if not prune:
        return optuna.pruners.NopPruner()
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=space.min_resource, max_resource=space.max_resource, reduction_factor=space.reduction_factor
        )
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=space.min_resource, reduction_factor=space.reduction_factor
    )


def reopen_trial(study: Any, storage: Any, number: int) -> Any:
    """The live ``optuna.trial.Trial`` of trial ``number`` (to report to, or set attributes on)."""
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    # the study's own (caching) storage must know the trial before the trainable suggests into it: reading the
    # study's running trials through it does that (a TPE sampler used to do it by chance; a random one does not)
    study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def study_name(space: ExploreSpace, storage: Any, new: bool = False) -> str:
    """The newest study of ``space`` in ``storage`` (``explore-<hash>`` if it has none), or with ``new`` the
    name of a fresh one after it (the earlier ones are kept)."""
    base = f"explore-{space.sha256[:16]}"
    ours = re.compile(re.escape(base) + r"(?:-(\d+))?")
    numbers = [
        int(m.group(1) or 1) for s in storage.get_all_studies() if (m := ours.fullmatch(s.study_name)) is not None
    ]
    last = max(numbers, default=0)
    n = last + 1 if new or not last else last
    return base if n == 1 else f"{base}-{n}"


def study_folder(url: str, name: str) -> Path:
    """Where study ``name`` of the store at ``url`` keeps its checkpoints and models:
    ``$CHIPFIT_HOME/explore/<name>`` (for another store than the default, the name is prefixed with the
    URL's hash: two stores may hold studies of the same space)."""
    from chipfit.store import default_url
    from chipfit.workspace import default_home

    key = name if url == default_url() else f"{hashlib.sha256(url.encode()).hexdigest()[:8]}-{name}"
    return default_home() / "explore" / key


def sampler(space: ExploreSpace, seed: int) -> Any:
    """The space's sampler (random or TPE), seeded: a study with the same seed samples the same configs."""
    import optuna

    kind = optuna.samplers.RandomSampler if space.sampler == "random" else optuna.samplers.TPESampler
    return kind(seed=seed)


def open_study(
    space: ExploreSpace, storage: Any, seed: int, prune: bool, now: float | None = None, new: bool = False
) -> Any:
    """Resume the newest study of ``space`` (named after its file's hash), or create it (with ``new``, a
    fresh one after those there are): trials a killed run left running are failed as interrupted, keeping
    what they were charged (recorded ahead: see ledger.py). A running trial whose record is still current
    (``now``, default the wall clock) belongs to another run of the same study that is alive, and is left to
    it."""
    import optuna

    from chipfit.explore.ledger import RECORDED_UNTIL

    name = study_name(space, storage, new)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize" if space.direction == "maximize" else "minimize",
        sampler=sampler(space, seed),
        pruner=pruner(space, prune),
    )
    now = time.time() if now is None else now
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if float(t.user_attrs.get(RECORDED_UNTIL, 0.0)) > now:
            log.warning("trial %d is running in another explore run of this study; left to it", t.number)
            continue
        reopen_trial(study, storage, t.number).set_user_attr("reason", INTERRUPTED)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return study


def trial_state(t: Any) -> str:
    if t.user_attrs.get("status") in ("rejected", "stopped"):
        return str(t.user_attrs["status"])  # told to Optuna as PRUNED; kept apart here
    return str(t.state.name.lower())


def winner(study: Any, usable: Any = None) -> dict[str, Any] | None:
    """The best completed trial (with a bound, completed means it met the bound when checked); ``usable``
    (a FrozenTrial -> bool) leaves out the trials it refuses."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = [t for t in done if usable is None or usable(t)]
    if not done:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    best = max(done, key=lambda t: (sign * t.value, -t.number))
    return {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "checkpoint": best.user_attrs.get("checkpoint"),
        "onnx": best.user_attrs.get("onnx"),
        "hardware": best.user_attrs.get("hardware"),
        "charged_s": best.user_attrs.get("charged_s"),
        "charged_usd": best.user_attrs.get("charged_usd"),
    }


def history(study: Any) -> list[dict[str, Any]]:
    return [
        {
            "trial": t.number,
            "state": trial_state(t),
            "value": t.value,
            "params": t.params,
            "curve": sorted((int(k), float(v)) for k, v in t.intermediate_values.items()),
            "charged_s": t.user_attrs.get("charged_s"),
            "charged_usd": t.user_attrs.get("charged_usd"),
            "reason": t.user_attrs.get("reason"),
            "hardware": t.user_attrs.get("hardware"),
            "threads": t.user_attrs.get("threads_used", t.user_attrs.get("threads")),
        }
        for t in study.get_trials(deepcopy=False)
    ]
