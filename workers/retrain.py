"""The training task's plain function: one trigger -> a trained, registered, gated model.

`run_retrain(trigger_id)`:
1. take the trigger (queued -> running; a duplicate message finds it taken and stops) and keep
   its lease renewed from a thread, so the beat's check fails it if this process dies;
2. export the reviewed jobs (their latest review) up to now: the held-back share by job id
   (`retrain_holdout_fraction`) into one folder, the rest into another;
3. train with the same code as `eldefect train`, from `retrain_config`, on its dataset plus
   the reviews folder as one more source; register the model;
4. gate it against the production model (eldefect.gate) on the fixed evaluation folder and
   the held-back reviews; `staging` when it passes, `production` too with auto_promote;
5. store the decision and every number as tags on the version and on the trigger, then move
   the aliases in the same transaction that closes the trigger (only if it is still ours).
Any error fails the trigger with the reason; nothing is retried (the next trigger is).
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import retrains
from db.models import utcnow
from db.reviews import reviewed_images
from db.session import session_scope
from eldefect.data.reviews import ExportReport, write_review_folders
from eldefect.settings import Settings

if TYPE_CHECKING:
    from eldefect.gate import GateResult

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """Retraining cannot run as configured (reason in the message)."""


class LeaseKeeper:
    """Renews a running trigger's lease every third of it, from a daemon thread."""

    def __init__(self, settings: Settings, trigger_id: int) -> None:
        self.settings, self.trigger_id = settings, trigger_id
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"retrain-lease-{trigger_id}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        lease = self.settings.retrain_lease_s
        while not self._stop.wait(lease / 3):
            try:
                with session_scope(self.settings.database_url) as session:
                    held = retrains.renew_lease(
                        session=session, trigger_id=self.trigger_id, lease_s=lease
                    )
            except Exception:  # the database may be back by the next renewal
                log.exception("could not renew the lease of retrain trigger %d", self.trigger_id)
                continue
            if not held:
                log.error("retrain trigger %d is no longer ours (expired)", self.trigger_id)
                return


@dataclass(frozen=True)
class RetrainOutcome:
    trigger_id: int
    version: str
    champion_version: str | None
    decision: str
    gate: dict[str, Any]


def run_retrain(
    *, trigger_id: int, settings: Settings, worker: str | None = None
) -> RetrainOutcome | None:
    """Run one trigger to its end (see the module docstring); None when it was not ours."""
    with session_scope(settings.database_url) as session:
        won = retrains.start_trigger(
            session=session,
            trigger_id=trigger_id,
            worker=worker or socket.gethostname(),
            lease_s=settings.retrain_lease_s,
        )
    if not won:
        log.info("retrain trigger %d is not queued (taken or closed): nothing to do", trigger_id)
        return None
    try:
        with LeaseKeeper(settings, trigger_id):
            outcome = _retrain(trigger_id, settings)
    except Exception as exc:
        log.exception("retrain trigger %d failed", trigger_id)
        with session_scope(settings.database_url) as session:
            retrains.fail_trigger(
                session=session, trigger_id=trigger_id, error=f"{type(exc).__name__}: {exc}"
            )
        return None
    log.info(
        "retrain trigger %d: v%s %s (champion v%s)",
        trigger_id,
        outcome.version,
        outcome.decision,
        outcome.champion_version,
    )
    return outcome


def export_reviews(
    settings: Settings, workdir: Path, labels: list[str]
) -> tuple[ExportReport, Path, Path]:
    """Reviewed jobs up to now into workdir/reviews (train) and workdir/holdout."""
    train_dir, holdout_dir = workdir / "reviews", workdir / "holdout"
    until = utcnow()
    with session_scope(settings.database_url) as session:
        report = write_review_folders(
            reviewed_images(session=session, until=until),
            train_dir=train_dir,
            holdout_dir=holdout_dir,
            holdout_fraction=settings.retrain_holdout_fraction,
            labels=labels,
        )
    return report, train_dir, holdout_dir


def _retrain(trigger_id: int, settings: Settings) -> RetrainOutcome:
    from eldefect.config import DataSource, load_train_config
    from eldefect.labels import load_label_set
    from eldefect.registry import register_run, resolve_alias
    from eldefect.train import train

    if settings.retrain_config is None:
        raise RetrainError("no training config: set ELDEFECT_RETRAIN_CONFIG to a YAML file")
    config = load_train_config(settings.retrain_config)
    config.name = f"retrain-{trigger_id}"
    workdir = settings.ensure_var_dir() / "retrain" / str(trigger_id)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    started = utcnow()
    labels = list(load_label_set(config.data.labels).labels)
    exported, train_dir, holdout_dir = export_reviews(settings, workdir, labels)
    log.info("retrain trigger %d: %s", trigger_id, exported.summary())
    with session_scope(settings.database_url) as session:
        retrains.record_progress(
            session=session,
            trigger_id=trigger_id,
            data_until=started,
            n_train_reviews=exported.train,
        )
    if exported.train:
        config.data.sources.append(DataSource(format="voc", root=train_dir))

    outcome = train(
        config,
        settings=settings,
        device=settings.retrain_device,
        progress=False,
        workdir=workdir,
    )
    name, uri = settings.model_name, settings.mlflow_tracking_uri
    version = register_run(outcome.run_id, name, uri)
    with session_scope(settings.database_url) as session:
        retrains.record_progress(
            session=session,
            trigger_id=trigger_id,
            run_id=outcome.run_id,
            model_name=name,
            model_version=version,
        )
    champion = resolve_alias(name, settings.model_alias, uri)
    result = gate_challenger(
        settings, version=version, champion=champion, holdout_dir=holdout_dir, exported=exported
    )
    decision = decision_for(settings, passed=result.passed)
    record = result.to_dict() | {
        "reviews": {
            "train": exported.train,
            "holdout": exported.holdout,
            "skipped_label_set": len(exported.skipped_label_set),
        },
        "auto_promote": settings.auto_promote,
    }
    _tag(settings, version, result.tags() | {"gate.decision": decision}, trigger_id)
    # The aliases move last, inside the transaction that closes the trigger: a trigger the
    # beat already failed (lease lost) promotes nothing, and a failed move rolls the record
    # back to running, so the trigger ends `failed` instead of claiming a promotion.
    with session_scope(settings.database_url) as session:
        if not retrains.finish_trigger(
            session=session,
            trigger_id=trigger_id,
            decision=decision,
            gate=record,
            champion_version=champion,
        ):
            raise RetrainError(
                f"trigger {trigger_id} is no longer running (its lease ran out): "
                f"v{version} is registered but no alias was moved"
            )
        move_aliases(settings, version=version, decision=decision)
    return RetrainOutcome(trigger_id, version, champion, decision, record)


def gate_challenger(
    settings: Settings,
    *,
    version: str,
    champion: str | None,
    holdout_dir: Path,
    exported: ExportReport,
) -> GateResult:
    """Score challenger and champion on each evaluation set and decide (eldefect.gate)."""
    from eldefect.gate import SetScores, compare, decide, score_folder
    from eldefect.predictor import load_predictor
    from eldefect.registry import model_uri

    name = settings.model_name
    challenger = load_predictor(model_uri(name, version), backend="torch", name=name)
    incumbent = (
        load_predictor(model_uri(name, champion), backend="torch", name=name)
        if champion is not None and champion != version
        else None
    )
    sets: list[tuple[str, Path, str, str | None]] = []
    if settings.retrain_eval_data is not None:
        sets.append(
            (
                "eval",
                settings.retrain_eval_data,
                settings.retrain_eval_format,
                settings.retrain_eval_cell_type,
            )
        )
    if exported.holdout >= settings.retrain_min_holdout:
        sets.append(("holdout", holdout_dir, "voc", None))
    else:
        log.info(
            "held-back reviews: %d < retrain_min_holdout=%d, not a gate set",
            exported.holdout,
            settings.retrain_min_holdout,
        )
    verdicts = []
    for set_name, folder, fmt, cell_type in sets:

        def scored(
            predictor: Any, folder: Path = folder, fmt: str = fmt, cell: str | None = cell_type
        ) -> SetScores:
            return score_folder(
                predictor,
                folder,
                data_format=fmt,
                cell_type=cell,
                max_pixels=settings.max_image_pixels,
            )

        verdicts.append(
            compare(
                set_name,
                scored(incumbent) if incumbent is not None else None,
                scored(challenger),
                ap_margin=settings.retrain_ap_margin,
                recall_margin=settings.retrain_recall_margin,
            )
        )
    result = decide(
        verdicts, ap_margin=settings.retrain_ap_margin, recall_margin=settings.retrain_recall_margin
    )
    log.info("%s", result.describe())
    return result


def decision_for(settings: Settings, *, passed: bool) -> str:
    """promoted, staged or rejected: what the gate's verdict allows under auto_promote."""
    if not passed:
        return "rejected"
    return "promoted" if settings.auto_promote else "staged"


def move_aliases(settings: Settings, *, version: str, decision: str) -> None:
    """`staging` for a staged or promoted version, the served alias too when promoted."""
    from eldefect.registry import STAGING, move_alias

    uri = settings.mlflow_tracking_uri
    if decision in ("staged", "promoted"):
        move_alias(settings.model_name, STAGING, version, uri)
    if decision == "promoted":
        move_alias(settings.model_name, settings.model_alias, version, uri)


def _tag(settings: Settings, version: str, tags: dict[str, str], trigger_id: int) -> None:
    from eldefect.registry import tag_version

    tag_version(
        settings.model_name,
        version,
        tags | {"retrain.trigger_id": str(trigger_id)},
        settings.mlflow_tracking_uri,
    )
