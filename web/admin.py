"""POST/GET /api/admin/retrain: a new head from the served head's own config, swapped in only if not worse.

A retrain runs in a thread of its own, one at a time (a second call while one runs answers 409):
it trains on the served store with the moderators' corrections applied, into a new folder beside the
served head, then scores the served head and the new one on the same validation and test splits
(the store's, corrections applied). The new head serves (through the reload path, which closes the
old predictor after its last request) only when its validation macro-F1 is not lower; otherwise it
stays on disk, is reported, and never serves.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from flask import abort, jsonify
from flask_openapi3 import APIBlueprint, Tag

from emoreact.heads import EmotionHead, report
from emoreact.index import Store
from emoreact.index.feedback import label_overrides
from emoreact.pipeline import train_from_store
from emoreact.trainset import score_splits

from . import schemas as s
from .resources import Resources, now, resources

log = logging.getLogger(__name__)


class Retrainer:
    """Runs retrains for one app; `last` is the outcome of the latest one (a dict as RetrainOutcome)."""

    def __init__(self, res: Resources) -> None:
        self._res = res
        self._lock = threading.Lock()  # held for the whole retrain: the 409 test
        self.started: str | None = None
        self.last: dict | None = None
        self.gate: threading.Event | None = None  # tests hold a retrain here, after it started, before training
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def start(self) -> bool:
        """Starts a retrain in the background; gives False when one is already running."""
        if not self._lock.acquire(blocking=False):
            return False
        self.started = now()
        self.thread = threading.Thread(target=self._run, name="emoreact-retrain", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        began = time.perf_counter()
        try:
            if self.gate is not None:
                self.gate.wait()
            outcome = self._retrain()
        except Exception as exc:  # noqa: BLE001 - any failure is reported, and the served head keeps serving
            log.exception("retrain failed; the served head keeps serving")
            outcome = {"outcome": "failed", "message": f"retrain failed, the served head keeps serving: {exc}",
                       "feedback_overrides": 0, "served": None, "new": None}
        self.last = {**outcome, "started": self.started, "finished": now(),
                     "seconds": round(time.perf_counter() - began, 2)}
        self._res.metrics.retrains.labels(self.last["outcome"]).inc()
        log.info("retrain %s in %.1f s: %s", self.last["outcome"], self.last["seconds"], self.last["message"])
        self.started = None
        self._lock.release()

    def _retrain(self) -> dict:
        res = self._res
        config = res.config
        if config.head is None:
            raise ValueError("the server was not started with a head folder (--head), so there is no config to "
                             "retrain from")
        served_head = Path(config.head)
        store_root = res.predictor.store.root
        head = EmotionHead.load(served_head)
        overrides = label_overrides(store_root)
        out = _new_folder(served_head)
        labels = head.label_config
        with res.store_lock:  # no feedback upload half-written while the store is read
            trained, metrics = train_from_store(store_root, out, head.config, labels, config.device,
                                                config.pretrained, overrides or None)
            served_scores, new_scores = _scores(store_root, [head, trained], overrides)
        served_scores["head"], new_scores["head"] = str(served_head), str(out)
        common = {"feedback_overrides": int(metrics.get("feedback_overrides", 0)), "served": served_scores,
                  "new": new_scores}
        old_f1, new_f1 = served_scores["val_macro_f1"], new_scores["val_macro_f1"]
        if old_f1 is not None and (new_f1 is None or new_f1 < old_f1):
            return {"outcome": "kept", **common,
                    "message": f"the new head scores {_f(new_f1)} validation macro-F1 against the served head's "
                               f"{_f(old_f1)}; it is kept at {out} and not served"}
        reload = res.reload(head=out)
        if not reload.ok:
            return {"outcome": "failed", **common, "message": f"the new head at {out} did not load: {reload.message}"}
        return {"outcome": "swapped", **common,
                "message": f"the new head at {out} serves now: validation macro-F1 {_f(new_f1)} "
                           f"(was {_f(old_f1)})"}


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _new_folder(served: Path) -> Path:
    """Gives a fresh folder beside the served head, named after it and the time."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    base = served.name.split(".retrain-")[0]
    for n in range(1000):
        out = served.parent / f"{base}.retrain-{stamp}{'' if n == 0 else f'-{n}'}"
        if not out.exists():
            return out
    raise FileExistsError(f"no free folder name beside {served} for the new head")


def _scores(store_root: Path, heads: list[EmotionHead], overrides: dict) -> list[dict]:
    """Gives each head's macro-F1 on the store's val and test splits (corrections applied)."""
    with Store.open(store_root, with_index=False) as store:
        per_head = [score_splits(store, head, ("val", "test"), overrides=overrides or None) for head in heads]
    out = []
    for head, splits in zip(heads, per_head):
        out.append({f"{split}_macro_f1": None if len(scores.targets) == 0 else round(float(report(
            scores.probs, scores.targets, head.thresholds_, head.labels, head.task_, fallback=head.fallback_)
            ["macro_f1"]), 4) for split, scores in splits.items()})
    return out


def start_retrain():
    """Start retraining the served head (admin key): 202 when started, 409 while one runs."""
    retrainer = resources().retrainer
    if not retrainer.start():
        abort(409, f"a retrain is already running (started {retrainer.started}); "
                   "see GET /api/admin/retrain for when it ends")
    return jsonify(running=True, started=retrainer.started, last=retrainer.last), 202


def retrain_status():
    """Whether a retrain runs now, and how the last one ended (both heads' validation and test macro-F1)."""
    retrainer = resources().retrainer
    return jsonify(running=retrainer.running, started=retrainer.started, last=retrainer.last)


def admin_routes(bp: APIBlueprint) -> None:
    """Adds the admin operations to the /api blueprint."""
    tags = [Tag(name="admin")]
    bp.post("/admin/retrain", tags=tags, summary="Retrain the served head (admin key)",
            responses={202: s.RetrainStatus, **{c: s.ErrorBody for c in (401, 403, 409)}})(start_retrain)
    bp.get("/admin/retrain", tags=tags, summary="The running and the last retrain (admin key)",
           responses={200: s.RetrainStatus, **{c: s.ErrorBody for c in (401, 403)}})(retrain_status)
