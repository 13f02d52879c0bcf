"""API keys and the feedback rate limit: who may read, correct and retrain.

Keys come from a file of lines `name:key` or `name:key:admin` (`serve --api-keys FILE`). A request
names its key as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Rights are checked per endpoint
before the view runs: reads are open unless `require_key_for_read`, feedback needs any key, admin
endpoints an admin key. Missing or unknown key: 401; a key without the right: 403.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flask import Response, current_app, g, request

MIN_KEY_LENGTH = 16  # shorter keys can be guessed; `secrets.token_urlsafe(24)` gives 32 characters
READ, FEEDBACK, ADMIN = "read", "feedback", "admin"

# Endpoint -> the right it needs; endpoints not listed (the page, static files, /healthz, the docs and
# the OpenAPI document) are open to all.
RIGHTS = {"api.predict": READ, "api.neighbours_of_id": READ, "api.neighbours_of_upload": READ,
          "api.thumbnail": READ, "api.labels": READ, "_metrics": READ,
          "api.post_feedback": FEEDBACK, "api.list_feedback": FEEDBACK,
          "api.start_retrain": ADMIN, "api.retrain_status": ADMIN}

_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class KeyFileError(ValueError):
    """The API key file cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class ApiKey:
    """One key as the file gives it; only its digest is kept in memory."""

    name: str  # shown in logs and stored with feedback, never the key itself
    digest: bytes  # sha256 of the key: equal-length values for the constant-time comparison
    admin: bool


def load_api_keys(path: str | Path) -> tuple[ApiKey, ...]:
    """Gives the keys of a key file (`name:key` or `name:key:admin` per line; # comments, blank lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read API key file {path}: {exc.strerror}; give a file of name:key lines") from exc
    keys, names, digests = [], set(), set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        parts = line.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
            raise KeyFileError(f"{where}: expected name:key or name:key:admin")
        name, key = parts[0], parts[1]
        if not _NAME.fullmatch(name):
            raise KeyFileError(f"{where}: key name {name[:40]!r} must be 1-64 letters, digits or ._@-")
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise KeyFileError(f"{where}: the key of {name!r} is shorter than {MIN_KEY_LENGTH} characters or has "
                               "spaces; make one with python -c 'import secrets; print(secrets.token_urlsafe(24))'")
        digest = _digest(key)
        if name in names or digest in digests:
            raise KeyFileError(f"{where}: the name {name!r} or its key is already used; give each key its own line")
        names.add(name)
        digests.add(digest)
        keys.append(ApiKey(name, digest, len(parts) == 3))
    if not keys:
        raise KeyFileError(f"{path} holds no keys; add lines such as moderator:KEY or ops:KEY:admin")
    return tuple(keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def match_key(keys: tuple[ApiKey, ...], given: str) -> ApiKey | None:
    """Gives the key whose value is `given`, or None; compares against every key, each in constant time,
    so that the time taken tells nothing about which key, or how much of one, matched."""
    digest = _digest(given)
    found = None
    for key in keys:  # no early exit
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


def presented_key() -> str | None:
    """Gives the key this request presents (Authorization: Bearer KEY, else X-API-Key), or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def refusal(status: int, message: str) -> Response:
    """Gives a JSON 401 (with its WWW-Authenticate challenge) or 403 answer."""
    response = current_app.json.response({"error": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="emoreact"'
    return response


def check_right(keys: tuple[ApiKey, ...], need: str, require_key_for_read: bool) -> Response | None:
    """Gives a refusal when this request lacks the right `need` (read, feedback or admin), else None;
    remembers the key's name as `g.key_name` for logs and feedback."""
    given = presented_key()
    key = match_key(keys, given) if given and keys else None
    g.key_name = key.name if key else None
    if need == READ and not require_key_for_read:
        return None  # open: a key sent along is neither needed nor checked
    if not keys:
        return refusal(401, f"this endpoint needs an API key ({need}), and the server has none; "
                            "start it with --api-keys FILE (lines name:key or name:key:admin)")
    if given is None:
        return refusal(401, "this endpoint needs an API key; send it as 'Authorization: Bearer KEY' "
                            "or 'X-API-Key: KEY'")
    if key is None:
        return refusal(401, "the API key sent is not valid; check it against the server's key file")
    if need == ADMIN and not key.admin:
        return refusal(403, f"the key {key.name!r} may not use admin endpoints; use a key marked :admin "
                            "in the server's key file")
    return None


class RateLimiter:
    """A token bucket per name: `per_minute` requests a minute, up to `per_minute` at once.

    Flask-Limiter was weighed and not used: the limit is one bucket per API key name on one endpoint,
    in one process, and the key name is known only after the key check; Flask-Limiter would bring
    its `limits` and `rich` dependencies for that, and its windows run on the wall clock, where this
    bucket takes a clock that a test sets, so the 429 is tested without sleeping.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError(f"the feedback rate limit must be above 0 per minute, got {per_minute}")
        self.per_minute, self.clock = float(per_minute), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, name: str) -> float:
        """Takes one token for `name`; gives 0 when it was there, else the seconds until one will be."""
        rate = self.per_minute / 60.0
        capacity = max(1.0, self.per_minute)
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(name, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / rate


def too_many(wait_s: float, per_minute: float) -> Response:
    """Gives the JSON 429 answer with Retry-After in whole seconds."""
    response = current_app.json.response({"error": f"this key sent more than {per_minute:g} corrections a minute; "
                                                   f"retry in {max(1, math.ceil(wait_s))} s"})
    response.status_code = 429
    response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return response
