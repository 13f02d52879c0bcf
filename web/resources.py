"""What the views share: the served predictor (leased per request, swapped by reloads), settings, keys,
metrics, the feedback log and the retrainer."""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from flask import current_app, g

from emoreact.embed import ModelLoadError
from emoreact.heads import ConfigError, HeadError
from emoreact.index import Store, StoreError

from .auth import ApiKey, RateLimiter
from .config import WebConfig
from .metrics import Metrics
from .thumbnails import Thumbnails

if TYPE_CHECKING:
    from emoreact.predictor import Predictor

log = logging.getLogger(__name__)

_LOAD_ERRORS = (StoreError, HeadError, ModelLoadError, ConfigError, OSError, ValueError)  # bad files, not bugs


@dataclass(frozen=True)
class Reload:
    """What one reload did."""

    ok: bool  # whether the newly loaded store and head are now served
    message: str  # what is served now, or why the load failed (naming the bad file)
    at: str  # when it finished, ISO 8601 UTC


class Resources:
    """What the views share, kept in `app.extensions["emoreact"]`; `reload()` swaps in a new predictor.

    Each request leases the predictor it starts on (`acquire`/`release`); a predictor that a reload
    replaced is closed (its batching thread stopped, its store closed) when its last lease ends.
    """

    def __init__(self, config: WebConfig, predictor: "Predictor", thumbnails: Thumbnails, *,
                 metrics: Metrics | None = None, keys: tuple[ApiKey, ...] = ()) -> None:
        self.config, self.thumbnails = config, thumbnails
        self.metrics = metrics or Metrics()
        self.keys = keys
        self.limiter = RateLimiter(config.feedback_per_minute)
        self._predictor = self._observed(predictor)
        self._reloading = threading.Lock()  # one reload at a time; requests never wait for it
        self._leases_lock = threading.Lock()  # guards the swap and the lease counts together
        self._leases: Counter = Counter()  # predictor -> requests running on it
        self.last_reload: Reload | None = None
        # Held while this process writes the store (a feedback upload) or reads it whole (a retrain): a
        # reader opening the store between a writer's add and finish would find it unfinished.
        self.store_lock = threading.Lock()
        self.feedback = None  # the FeedbackLog, opened by the app when the served store has a folder
        self.retrainer = None  # set by the app (web/admin.py)

    @property
    def predictor(self) -> "Predictor":
        """The predictor that new requests use; a reload replaces it, it never changes in place."""
        return self._predictor

    def acquire(self) -> "Predictor":
        """Gives the served predictor, kept open until the matching `release`."""
        with self._leases_lock:
            self._leases[self._predictor] += 1
            return self._predictor

    def release(self, predictor: "Predictor") -> None:
        """Ends a lease; closes the predictor if a reload replaced it and this was its last request."""
        with self._leases_lock:
            self._leases[predictor] -= 1
            retired = self._leases[predictor] == 0 and predictor is not self._predictor
            if self._leases[predictor] == 0:
                del self._leases[predictor]
        if retired:
            _close(predictor)

    def reload(self, head: Path | None = None) -> Reload:
        """Loads store and head again through `config.loader` (`head`: from another folder from now on);
        serves them only if they load; says how it went."""
        with self._reloading:
            config = self.config if head is None else replace(self.config, head=Path(head))
            try:
                predictor = config.loader(config)
            except Exception as exc:  # noqa: BLE001 - whatever broke, the previous predictor keeps serving
                (log.error if isinstance(exc, _LOAD_ERRORS) else log.exception)(
                    "reload failed, still serving the previous store and head: %s", exc)
                result = Reload(False, f"reload failed, still serving the previous store and head: {exc}", now())
            else:
                self.config = config
                self._swap(predictor)
                # The store path may now lead elsewhere (a re-pointed symlink): the corrections log is
                # opened again on first use. The old one is left to close itself, not closed under a request.
                self.feedback = None
                result = Reload(True, f"reloaded: now serving {len(predictor.store)} indexed images", now())
                log.info("%s", result.message)
            self.metrics.reloads.labels("ok" if result.ok else "failed").inc()
            self.last_reload = result
            return result

    def refresh_store(self) -> None:
        """Serves the store re-opened from disk (after this server added to it) with the same backbone
        and head: no model is loaded again, and requests running finish on the old store."""
        with self._reloading:
            served = self._predictor
            self._swap(served.with_store(Store.open(served.store.root, **served.store.search_overrides)))

    def _swap(self, predictor: "Predictor") -> None:
        # One reference swap: requests already running hold the old predictor and finish on it;
        # the last of them closes it (or we do now, when none is running).
        with self._leases_lock:
            old, self._predictor = self._predictor, self._observed(predictor)
            idle = self._leases[old] == 0
        if idle:
            _close(old)

    def _observed(self, predictor: "Predictor") -> "Predictor":
        predictor.batch_observer = self.metrics.observe_batch
        return predictor


def _close(predictor: "Predictor") -> None:
    close = getattr(predictor, "close", None)  # tests may serve a stand-in without one
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - a failed close must not fail the request that triggered it
            log.exception("closing a replaced predictor failed")


def now() -> str:
    """Gives the time now, ISO 8601 UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resources() -> Resources:
    """Gives the current app's config, predictor and thumbnail cache."""
    return current_app.extensions["emoreact"]


def predictor() -> "Predictor":
    """Gives the predictor of this request: the one served when it first asked, even if a reload swaps it."""
    if "emoreact_predictor" not in g:
        g.emoreact_predictor = resources().acquire()
    return g.emoreact_predictor


def release_predictor(_exc: BaseException | None = None) -> None:
    """Ends this request's lease on its predictor (registered as an app-context teardown)."""
    served = g.pop("emoreact_predictor", None)
    if served is not None:
        resources().release(served)
