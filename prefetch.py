"""Read-ahead on a background thread, for work that releases the GIL: reading store blocks (SQLite,
float16 -> float32) while torch or pyarrow uses the last one, or decoding the next JPEG batches on a
GPU while the model runs the current one. Both sides then overlap, even on two cores."""
from __future__ import annotations

import queue
import threading
from typing import Iterator


def prefetched(iterator: Iterator, depth: int = 2, name: str = "emoreact-prefetch") -> Iterator:
    """Gives the items of `iterator`, read ahead by a background thread named `name` (at most `depth`
    waiting). An error in the reader is raised here; stopping early (break, an error here, closing the
    generator) stops the reader."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry: tuple) -> bool:
        while not stop.is_set():  # never blocks for good: the consumer may have stopped
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in iterator:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            offer((done, exc))

    reader = threading.Thread(target=read, name=name, daemon=True)
    reader.start()
    try:
        while True:
            item, error = items.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        reader.join()
