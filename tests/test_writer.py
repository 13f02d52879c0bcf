"""The embed job's writer after a kill: a copy whose original was committed before the copy's skip row was
written gets that row from the rerun, as an uninterrupted job writes it (both engines share the writer)."""
import shutil

from conftest import FAST_EMBED
from emoreact.embed import read_source, run_embed_job
from emoreact.index import Store
from synthetic import draw


def embed(records, path, backbone) -> None:
    store = Store.create_or_resume(path, backbone.spec.model_id, backbone.dim, {}, [])
    run_embed_job(records, store, backbone, FAST_EMBED)
    store.close()


def skipped(path) -> list[tuple[str, str]]:
    store = Store.open(path)
    rows = store.skipped()
    store.close()
    return rows


def test_rerun_writes_the_skip_rows_a_kill_left_out(tmp_path, backbone, label_config):
    source = tmp_path / "src"
    source.mkdir()
    for n in range(6):
        draw(("happy",), seed=n).save(source / f"{n}.png")
    shutil.copy(source / "2.png", source / "2b.png")  # a copy of an image
    (source / "x.png").write_bytes(b"")
    (source / "y.png").write_bytes(b"")  # a copy of a file refused for its content
    records = read_source(source, label_config)
    embed(records, tmp_path / "clean", backbone)
    # What a kill between the originals' commit and the copies' skip rows leaves: the copies have no row.
    copies = {str(source / "2b.png"), str(source / "y.png")}
    embed([r for r in records if str(r.path) not in copies], tmp_path / "killed", backbone)
    assert {path for path, _ in skipped(tmp_path / "killed")} & copies == set()

    embed(records, tmp_path / "killed", backbone)
    assert skipped(tmp_path / "killed") == skipped(tmp_path / "clean")
    assert (str(source / "2b.png"), f"duplicate of {source / '2.png'}") in skipped(tmp_path / "clean")
