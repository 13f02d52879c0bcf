"""The benchmarks run end to end on small sizes and report both sides (figures are not asserted)."""
import numpy as np
import pytest

from conftest import TINY_MODEL


def test_head_bench_reports_both_heads_on_both_sets():
    from emoreact.bench import head_bench

    result = head_bench.run(1500, device="cpu", c_grid=(1e-3, 1e-2))
    for task in ("single", "multi"):
        compared = result[task]
        assert {"ours", "sklearn", "speedup", "macro_f1_gap"} <= set(compared)
        assert compared["ours"]["task_detected"] == task and compared["ours"]["seconds"] > 0
        assert abs(compared["macro_f1_gap"]) < 0.1
    assert {"top1_accuracy", "top1_macro_f1"} <= set(result["single"]["ours"])
    assert "top1_accuracy" in result["single"]["sklearn"]


def test_head_bench_sets_are_single_and_multi_label_with_middle_classes():
    from emoreact.bench.head_bench import make_data

    x, y = make_data(500, "single")
    assert x.shape == (500, 512) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert (y.sum(axis=1) == 1).all()
    x, y = make_data(500, "multi")
    assert (y.sum(axis=1) >= 1).all() and (y.sum(axis=1) > 1).mean() > 0.2
    assert 0.4 < float((x[:100] @ x[:100].T).mean()) < 0.6  # CLIP-like shared direction


@pytest.mark.subprocess  # each search served by its own process, per kind of query: ~15 s
def test_index_bench_reports_recall_latency_and_memory_beside_exact_search(tmp_path):
    from emoreact.bench import index_bench

    result = index_bench.run(size=3000, dim=64, index="IVF16_HNSW32,RaBitQ", keep=tmp_path / "store", rounds=1)
    assert result["index"] == "IVF16_HNSW32,RaBitQ" and result["vectors"] == 3000
    assert 0.0 < result["recall_at_10"] <= 1.0 and result["p95_ms"] >= result["p50_ms"] >= 0
    assert result["exact_p95_ms"] >= 0 and "speedup_p95" in result and result["server_rss_mib"] > 0
    assert result["warmup_p95_ms"] >= result["warmup_p50_ms"] > 0  # 1,000 other queries, answered first
    assert result["add_1pct_seconds"] >= 0 and result["index_after_add"] == "IVF16_HNSW32,RaBitQ"  # ms on 3,000 rows
    assert set(result["by_query"]) == {"held_out", "near_copies", "new_topics"}  # each kind, as served and fixed
    for figures in result["by_query"].values():
        for search in ("adaptive", "fixed") if result["far_below"] is not None else ("adaptive",):
            assert 0 < figures[search]["recall_at_10"] <= 1 and figures[search]["p95_ms"] >= figures[search]["p50_ms"] > 0
            assert figures[search]["similarity_gap_p95"] >= 0 and figures[search]["similarity_gap_mean"] >= 0
    new_topics = result["by_query"]["new_topics"]
    assert new_topics["best_cosine_median"] < result["by_query"]["near_copies"]["best_cosine_median"]
    if result["far_below"] is not None:  # the second pass only adds candidates: never fewer true neighbours,
        for figures in result["by_query"].values():  # never a lower similarity at any rank
            assert figures["adaptive"]["recall_at_10"] >= figures["fixed"]["recall_at_10"]
            assert figures["adaptive"]["similarity_gap_mean"] <= figures["fixed"]["similarity_gap_mean"]
            assert 0 <= figures["second_pass_share"] <= 1
    from emoreact.bench.synthetic_store import Mixture
    from emoreact.index import Store

    kept = Store.open(tmp_path / "store", with_index=False)  # a rerun on the kept store draws queries from
    assert Mixture.of_store(kept) == Mixture.for_rows(3000, 64)  # the mixture it was written from
    kept.close()
    flat = index_bench.run(size=500, dim=64, index="flat", rounds=1)
    assert flat["index"] == "Flat" and flat["recall_at_10"] == 1.0  # exact search agrees with brute force
    assert all(f["adaptive"]["recall_at_10"] == 1.0 and f["fixed"] is None for f in flat["by_query"].values())


def test_codes_bench_measures_rabitq_and_pq_on_the_same_lists(tmp_path):
    from emoreact.bench import codes_bench

    result = codes_bench.run(size=3000, dim=64, lists=16)
    assert result["rabitq"]["index"] == "IVF16_HNSW32,RaBitQ" and result["pq"]["index"] == "IVF16_HNSW32,PQ8"
    for kind in ("rabitq", "pq"):
        figures = result[kind]
        assert figures["recall_at_10"] >= 0.9 and figures["p95_ms"] >= figures["p50_ms"] > 0
        assert figures["nprobe"] > 0 and figures["candidates"] > 0 and 0 < figures["codes_scanned"] <= 3000
    assert result["vectors"] == 3000 and result["speedup_p95"] > 0
    assert result["rabitq"]["bytes_per_vector"] == 8 + 8 + 8 and result["pq"]["bytes_per_vector"] == 8 + 8


def test_embed_bench_runs_all_three_pipelines():
    from emoreact.bench import embed_bench

    result = embed_bench.run(TINY_MODEL, images=24, batch_size=8, workers=0, device="cpu", rounds=1)
    for key in ("ours_images_per_s", "baseline_pil_dataloader_images_per_s", "limit_model_only_images_per_s"):
        assert result[key] > 0


def test_dedup_bench_reports_each_search_and_the_groups_found():
    from emoreact.bench import dedup_bench

    result = dedup_bench.run(count=2000, dim=32, clusters=20)
    assert result["exact_groups"] == 100 and result["group_recall"] == 1.0
    assert result["store_index"].startswith("IVF") and result["store_index_group_recall"] == 1.0
    assert result["baseline_exact_seconds"] > 0 and result["ours_ivf_seconds"] > 0 and result["store_index_seconds"] > 0


@pytest.mark.subprocess
def test_measured_child_peak_memory_is_its_own_not_its_parents(tmp_path):
    import json
    import subprocess
    import sys

    def child_peak() -> int:
        out = tmp_path / "peak.json"
        subprocess.run([sys.executable, "-m", "emoreact.bench.measured", str(out), "--help"], check=True,
                       capture_output=True)
        return json.loads(out.read_text())["peak_rss_mib"]

    alone = child_peak()
    ballast = bytearray(b"x" * 2**30)  # the parent now holds 1 GiB of written pages when it forks
    beside = child_peak()
    del ballast
    assert alone > 0 and abs(beside - alone) < 256, (alone, beside)  # wait4's ru_maxrss would add the GiB


def test_photos_are_the_same_whether_drawn_in_one_process_or_several(tmp_path):
    from emoreact.bench.common import write_photos

    one = write_photos(tmp_path / "one", 6, size=(64, 48), processes=1)
    several = write_photos(tmp_path / "several", 6, size=(64, 48), processes=2)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in several]
    assert len({p.read_bytes() for p in one}) == 6  # and each photo is its own


def test_bench_embed_takes_batch_size_and_workers_from_the_command_line():
    import json

    from click.testing import CliRunner

    from emoreact.cli import main

    result = CliRunner().invoke(main, ["bench", "embed", "--device", "cpu", "--model", TINY_MODEL, "--size", "8",
                                       "--rounds", "1", "--batch-size", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    assert (figures["batch_size"], figures["workers"], figures["images"]) == (4, 0, 8)
    assert "stages_images_per_s" not in figures  # the stage breakdown is the GPU fast path's


@pytest.mark.subprocess
def test_gpu_check_script_installs_nothing_it_has_and_archives_what_it_ran(tmp_path):
    """The script's scaffolding, with no check selected: the GPU checks themselves need a GPU machine."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    env = {**os.environ, "ONLY": "none", "PYTHON": sys.executable}
    subprocess.run(["bash", str(script), str(tmp_path / "out"), "cpu", "small"], check=True, env=env,
                   capture_output=True, timeout=120)
    assert not (tmp_path / "out" / "install.log").exists()  # this Python has the packages: no wheels installed
    with tarfile.open(tmp_path / "out" / "gpu_check.tar.gz") as archive:
        assert "./machine.txt" in archive.getnames()
    assert sys.version.split()[0] in (tmp_path / "out" / "machine.txt").read_text()


def test_measured_writes_its_peak_memory_as_the_command_exits(tmp_path, monkeypatch, capsys):
    """bench/measured.py in this process (the subprocess test above checks whose memory it counts)."""
    import atexit
    import json


    from emoreact.bench import measured

    at_exit = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    with pytest.raises(SystemExit) as done:
        measured.main(str(tmp_path / "peak.json"), ["--help"])
    assert done.value.code == 0 and "Usage: emoreact" in capsys.readouterr().out
    [write_peak] = at_exit  # what runs as the process exits
    write_peak()
    assert json.loads((tmp_path / "peak.json").read_text())["peak_rss_mib"] > 0


def test_index_serve_answers_each_query_alone_and_reports_its_latency(store_path, tmp_path, capsys):
    """The serving side of `bench index` in this process (bench index runs it as its own)."""
    import json

    from emoreact.bench import index_serve
    from emoreact.index import Store

    store = Store.open(store_path)
    queries = store.vectors()[:5].astype(np.float32)
    store.close()
    np.save(tmp_path / "queries.npy", queries)
    np.save(tmp_path / "warmup.npy", queries[:2])
    index_serve.main(str(store_path), str(tmp_path / "queries.npy"), str(tmp_path / "warmup.npy"))
    out = json.loads(capsys.readouterr().out)
    assert len(out["ids"]) == 5 and all(n in found for n, found in enumerate(out["ids"]))  # each finds itself
    assert out["warmup_queries"] == 2 and out["p95_ms"] >= out["p50_ms"] > 0
    assert out["peak_rss_mib"] >= out["open_rss_mib"] > 0


def test_api_bench_reports_latency_and_rate_with_and_without_micro_batching():
    from emoreact.bench import api_bench

    result = api_bench.run(TINY_MODEL, seconds=0.3, device="cpu", levels=(1, 2), warmup=0.1)
    for mode in ("one_call_per_request", "micro_batching"):
        for level in (1, 2):
            figures = result[mode][f"concurrency_{level}"]
            assert figures["requests"] > 0 and figures["errors"] == 0, figures
            assert figures["p95_ms"] >= figures["p50_ms"] > 0 and figures["requests_per_s"] > 0
    assert result["micro_batching_rps_ratio_at_top_concurrency"] > 0 and result["model"] == TINY_MODEL


def test_train_score_bench_trains_at_each_cap_and_scores_beside_the_per_image_answer(tmp_path, monkeypatch):
    """The bench's steps on a small store, each command run in this process (the bench starts each as its own
    process to read its peak memory; bench/measured.py is tested above)."""
    import time

    from click.testing import CliRunner

    from emoreact.bench import train_score_bench
    from emoreact.cli import main

    def in_process(args: list[str]) -> tuple[float, float, str]:
        start = time.perf_counter()
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        in_process.cpu_seconds = 0.0
        return time.perf_counter() - start, 0.0, done.stdout.strip()  # unrounded: a fast step is not 0 s

    monkeypatch.setattr(train_score_bench, "_child", in_process)
    result = train_score_bench.run(tmp_path / "store", size=1000, caps=(300, 0))
    assert result["images"] == 1000 and result["generate_seconds"] >= 0
    capped, whole = result["train_cap_300"], result["train_cap_none"]
    assert capped["train_rows"]["used"] <= 300 < whole["train_rows"]["used"] == whole["train_rows"]["labelled"]
    assert 0 < whole["test_macro_f1"] <= 1
    assert result["score"]["rows"] == 1000 and result["score_baseline_per_image"]["rows"] > 0
    assert result["score_speedup"] > 0


def test_the_embed_bench_on_ray_without_the_extra_fails_at_once_naming_it(monkeypatch):
    import sys

    from emoreact.bench import embed_bench
    from emoreact.embed import EngineError

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(EngineError, match=r'pip install "emoreact\[ray\]"'):
        embed_bench.run(TINY_MODEL, images=8, device="cpu", engine="ray")


def test_reindex_bench_measures_the_in_process_build_alone_without_ray(monkeypatch):
    import sys

    from emoreact.bench import reindex_bench

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra: never reached
    result = reindex_bench.run(size=1000, index="flat", engines=("local",))
    assert (result["size"], result["index"]) == (1000, "flat") and "ray" not in result
    assert "ray_over_local_seconds" not in result and result["environment"]
    local = result["local"]
    assert local["factory"] == "Flat" and local["seconds"] >= 0
    assert local["recall_at_10"] == 1.0  # exact search agrees with brute force on the held-out queries
    with pytest.raises(ValueError, match=r"engines local,spark: the engines are local and ray; name one or both"):
        reindex_bench.run(size=10, engines=("local", "spark"))


@pytest.mark.long
def test_bench_clips_reports_quality_speed_and_targets_end_to_end(tmp_path):
    """`bench clips` at one clip per kind and format: every reader's macro-F1, decoding per format, the API
    timings beside a still, the embed job's clips stored as clips, and each target with its verdict."""
    import json

    from click.testing import CliRunner

    from emoreact.cli import main

    result = CliRunner().invoke(main, ["bench", "clips", "--size", "1", "--device", "cpu", "--keep", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    formats = out["clips"]["formats"]
    assert {"gif", "webp"} <= set(formats) and ("mp4" in formats) == ("mp4_left_out" not in out["clips"])
    quality = out["macro_f1"]
    assert quality["clips"] == 3 * len(formats) and quality["stills"] > 50
    readers = {"first_frame", "middle_frame", "clip_share", "clip_scores", "clip_features"}
    for name in readers | {"still_images_of_the_same_art"}:
        assert 0 <= quality[name] <= 1, name
    assert set(quality["by_kind"]) == {"stretch", "mixed", "static"}
    assert all(set(by) == readers for by in quality["by_kind"].values())
    assert quality["best_pooling"] in ("share", "scores", "features")
    for fmt in formats:
        decoding = out["decoding"][fmt]
        assert decoding["clips"] == 3 and decoding["clips_per_s"] > 0 and 1 <= decoding["frames_used_per_clip"] <= 8
    api = out["api"]
    kinds = {"gif_8_frames", "still_image"} | ({"mp4_10_seconds"} if "mp4" in formats else set())
    for kind in kinds:
        assert api[kind]["requests"] == 2 and api[kind]["p95_ms"] >= api[kind]["p50_ms"] > 0, kind
    assert api["model_only_ms_per_image"] > 0
    job = out["embed_job"]
    assert job["clips"]["added"] == job["clips"]["stored_as_clips"] == 3 * len(formats)
    assert job["stills"]["stored_as_clips"] == 0 and job["clips"]["per_s"] > 0 and job["stills"]["per_s"] > 0
    gif = out["targets"]["gif_p95_within_still_p95_plus_7_model_ms"]
    assert gif["bound_ms"] == pytest.approx(api["still_image"]["p95_ms"] + 7 * api["model_only_ms_per_image"], abs=0.1)
    assert all(isinstance(target["met"], bool) for target in out["targets"].values())
    assert (tmp_path / "clips").is_dir() and len(list((tmp_path / "clips").iterdir())) == 3 * len(formats)


def test_bench_clips_parts_decode_embed_and_score_a_few_clips(tmp_path, backbone, label_config):
    """The parts of `bench clips` on a clip of each format with the tiny model (the whole bench is the long
    test above): decoding rates, the embed job's clips beside their middle frames, macro-F1 and the targets."""
    import numpy as np

    from emoreact.bench import clips_bench
    from emoreact.clipset import make_clips

    formats, _ = clips_bench._formats()
    made = make_clips(seed=1, per_kind=1, formats=formats)
    clips = [next(c for c in made if c.format == fmt) for fmt in formats]  # one of each format
    decoding = clips_bench._decoding(clips, 64, rounds=1)
    assert set(decoding) == {c.format for c in clips} and all(d["clips_per_s"] > 0 for d in decoding.values())
    job = clips_bench._embed_job(tmp_path, clips, backbone, label_config)
    assert job["clips"]["added"] == job["clips"]["stored_as_clips"] == len(clips)
    assert job["stills"]["stored_as_clips"] == 0
    truth = np.array([[True, False], [False, True], [True, True]])
    assert clips_bench._f1(truth, truth) == 1.0 and clips_bench._f1(truth, ~truth) == 0.0
    targets = clips_bench._quality_targets({"best_pooling": "share", "clip_share": 0.7, "first_frame": 0.4,
                                            "middle_frame": 0.5, "still_images_of_the_same_art": 0.65})
    assert targets["clip_at_least_still"]["met"] and not targets["clip_0.25_above_single_frames"]["met"]
