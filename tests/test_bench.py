"""The benchmarks run end to end on small sizes and report both sides (figures are not asserted)."""
from conftest import TINY_MODEL


def test_head_bench_reports_both_heads():
    from emoreact.bench import head_bench

    result = head_bench.run(3000, device="cpu")
    assert {"ours_seconds", "baseline_sklearn_ovr_logreg_seconds", "speedup", "macro_f1_gap"} <= set(result)
    assert abs(result["macro_f1_gap"]) < 0.1


def test_index_bench_agrees_with_brute_force():
    from emoreact.bench import index_bench

    result = index_bench.run(count=5000, dim=64, queries=40)
    assert result["neighbours_identical_to_brute_force"] == 1.0
    assert result["ours_faiss_queries_per_s"] > 0 and result["baseline_numpy_queries_per_s"] > 0


def test_embed_bench_runs_all_three_pipelines():
    from emoreact.bench import embed_bench

    result = embed_bench.run(TINY_MODEL, images=24, batch_size=8, workers=0, device="cpu", rounds=1)
    for key in ("ours_images_per_s", "baseline_pil_dataloader_images_per_s", "limit_model_only_images_per_s"):
        assert result[key] > 0
