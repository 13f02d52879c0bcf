"""Named fault points: a test makes a writer die by SIGKILL at an exact step, not at a random moment.

`EMOREACT_FAULT=after_shard_file:3` kills the process the 3rd time it reaches
`fault_point("after_shard_file")`. A kill test that races a signal against the clock can land
anywhere, or nowhere, and so fails at random; one that names the step gives the same store every
run. Unset (the normal case), a fault point costs one environment lookup.

A process that is restarted after the kill (a Ray worker) would count from zero and die again at
the same step: with `EMOREACT_FAULT_ONCE=FILE` it dies only if FILE does not exist yet, and creates it.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "EMOREACT_FAULT"
ONCE_ENV = "EMOREACT_FAULT_ONCE"
POINTS = (
    "during_shard_write",  # a shard's temporary file is written, not yet renamed into vectors/
    "after_shard_file",  # a shard file is in place, the rows that point at it are not committed
    "after_shard_rows",  # a shard and its rows are committed, the next shard not started
    "during_index_write",  # finish(): the temporary index.faiss is written, not yet renamed
    "before_manifest",  # the new index file is in place, the manifest still names the old one
    "before_near_duplicates_recorded",  # finish(): indexed and grouped, the manifest not yet saying so
    "after_remove_commit",  # remove(): the rows are gone from SQLite, the shard and index still hold them
    "during_remove",  # remove(): the vectors are zeroed, the new index is not yet written
)
BACKFILL_POINTS = (  # only a backfill re-embedding stored animations as clips reaches these
    "after_clip_vectors",  # the clips' pooled vectors overwrite their rows; the clips table does not say so yet
    "after_clip_commit",  # the clips are recorded (not indexed); the index still holds the first-frame vectors
)
WORKER_POINTS = (  # outside the store writer, so that kill tests drawing from POINTS never wait for them
    "in_embed_worker",  # a Ray model worker has taken a batch and not yet given back its vectors
)
_reached: Counter = Counter()


def fault_point(name: str) -> None:
    """Kills this process with SIGKILL if EMOREACT_FAULT names this point and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, step = _parse(spec)
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == step and _first_time(os.environ.get(ONCE_ENV)):
        os.kill(os.getpid(), signal.SIGKILL)


def _first_time(marker: str | None) -> bool:
    """Tells whether this kill is the first of its marker file (always, without one); creates the file."""
    if not marker:
        return True
    try:
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False


def _parse(spec: str) -> tuple[str, int]:
    point, _, step = spec.partition(":")
    if point not in POINTS + BACKFILL_POINTS + WORKER_POINTS or not (step or "1").isdigit() or int(step or 1) < 1:
        raise ValueError(f"{ENV}={spec!r} is not a fault point; use NAME or NAME:N (N >= 1), "
                         f"NAME one of {', '.join(POINTS + BACKFILL_POINTS + WORKER_POINTS)}")
    return point, int(step or 1)
