"""Micro-batching for the server: the model calls of concurrent requests run as one batch."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np
import torch


class MicroBatcher:
    """Runs the model calls of concurrent requests as one batch.

    No request waits for company: whatever queued up while the previous batch ran goes into the
    next one, so a lone request is not slowed and a busy server makes few, large calls.
    Batching changes floating-point summation order, so scores can differ from a lone request in
    the last bits; that is why it is on by default only on the GPU, where it pays most.
    """

    def __init__(self, encode, max_batch: int = 64) -> None:
        self._encode, self._max_batch = encode, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._closing = threading.Lock()  # no call may be queued behind the stop marker: it would wait forever
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Gives (N, D) float32 vectors for a (N, 3, H, W) batch, computed together with others."""
        future: Future = Future()
        with self._closing:
            if self._closed:
                raise RuntimeError("this predictor was closed; load a new one")
            self._queue.put((batch, future))
        return future.result()

    def close(self) -> None:
        """Stops the batching thread once the calls already queued are answered; waits for it."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs = [self._queue.get()]
            if jobs[0] is _STOP:
                return
            size = len(jobs[0][0])
            while size < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:  # answer what was gathered, then stop
                    stopping = True
                    break
                jobs.append(job)
                size += len(job[0])
            self._answer(jobs)

    def _answer(self, jobs: list) -> None:
        try:
            vectors = self._encode(torch.cat([batch for batch, _ in jobs]))
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in jobs:
                future.set_exception(exc)
            return
        start = 0
        for batch, future in jobs:
            future.set_result(vectors[start:start + len(batch)])
            start += len(batch)


_STOP = object()  # put on a MicroBatcher's queue by close()
