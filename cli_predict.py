"""What `cli.py predict` does beyond the Python API: sources expanded into image files, results written to a file.

The CLI owns this module; the library packages (embed, heads, index) never import it.
"""
from __future__ import annotations

from pathlib import Path

from emoreact.labels import LabelConfig
from emoreact.outputs import ResultWriter, output_format
from emoreact.results import PREDICTION, UNREADABLE


def image_paths(sources: list[str | Path], labels: LabelConfig, caption: str | None = None) -> list[tuple[str, str | None]]:
    """Gives the (image file, caption) posts of `sources` in order: a file as itself with `caption`, a folder
    or a .csv/.jsonl manifest as every image it lists with its caption column (read as `embed` reads it;
    only paths and captions are read, no image yet)."""
    from emoreact.embed import read_source

    posts: list[tuple[str, str | None]] = []
    for source in sources:
        source = Path(source)
        if source.is_dir() or source.suffix.lower() in (".csv", ".jsonl"):
            posts += [(str(record.path), record.caption) for record in read_source(source, labels)]
        else:
            posts.append((str(source), caption))
    return posts


def predict_to_file(predictor, images: list, out: str | Path, *, batch_size: int = 64, k: int = 5,
                    progress: bool = False) -> dict:
    """Writes the predictor's result for each image to `out` (.jsonl or .parquet), `batch_size` images at a
    time (memory does not grow with their number); gives {"images", "errors", "out"}."""
    schema = PREDICTION.arrow_schema(predictor.labels, after=UNREADABLE) if output_format(out) == "parquet" else None
    errors = 0
    with ResultWriter(out, schema) as writer:
        batch: list[dict] = []
        for result in predictor.predict_many(images, batch_size=batch_size, k=k, progress=progress):
            errors += "error" in result
            batch.append(result)
            if len(batch) == batch_size:
                writer.write_rows(batch)
                batch = []
        writer.write_rows(batch)
    return {"images": writer.rows, "errors": errors, "out": str(out)}
