"""The ONNX runtime: the towers exported from the open_clip model agree with torch, the graphs are cached per
weights, and int8 vectors never mix with fp32 ones."""
from __future__ import annotations

import os
import stat
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import FAST_EMBED, TINY, TINY_MODEL, synthetic_items  # noqa: E402
from synthetic import draw, make_manifest  # noqa: E402

import emoreact  # noqa: E402
from emoreact.embed import ModelLoadError, ModelSpec, load_backbone  # noqa: E402
from emoreact.embed.runtime import cache_root  # noqa: E402
from emoreact.heads import HeadError  # noqa: E402
from emoreact.index import Store, StoreError  # noqa: E402
from emoreact.predictor_config import PredictorConfig  # noqa: E402

TEXTS = ["a happy dog", "so sad", "😀 angry cat", ""]


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory):
    """Graphs go to a cache folder of this module's own, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield cache_root()


def _images(backbone, count: int = 12) -> torch.Tensor:
    """Gives (N, 3, H, W) preprocessed generated pictures: the synthetic labels' drawings and noise photos."""
    rng = np.random.default_rng(0)
    pictures = [draw((label,), seed) for seed, label in enumerate(["happy", "sad", "angry", "fear"] * 2)]
    from PIL import Image
    pictures += [Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)) for _ in range(count - 8)]
    return torch.stack([backbone.transform(p) for p in pictures])


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (a * b).sum(-1).numpy()


@pytest.fixture(scope="module")
def tiny_torch():
    return load_backbone(TINY, "cpu")


def test_fp32_onnx_gives_torchs_vectors_and_id(tiny_torch):
    onnx = load_backbone(replace(TINY, runtime="onnx"), "cpu")
    images = _images(tiny_torch)
    assert onnx.spec.model_id == tiny_torch.spec.model_id  # fp32 ONNX shares torch's id: this test guards it
    assert _cosines(onnx.encode_images(images), tiny_torch.encode_images(images)).min() >= 0.9999
    assert _cosines(onnx.encode_texts(TEXTS[:3]), tiny_torch.encode_texts(TEXTS[:3])).min() >= 0.9999
    assert onnx.encode_images(images).dtype == torch.float32
    assert torch.allclose(onnx.encode_images(images).norm(dim=-1), torch.ones(len(images)), atol=1e-5)


def test_int8_is_close_and_has_its_own_id(tiny_torch):
    int8 = load_backbone(replace(TINY, runtime="onnx", precision="int8"), "cpu")
    images = _images(tiny_torch)
    assert int8.spec.model_id == tiny_torch.spec.model_id + "+int8"
    assert _cosines(int8.encode_images(images), tiny_torch.encode_images(images)).min() >= 0.99
    assert _cosines(int8.encode_texts(TEXTS[:3]), tiny_torch.encode_texts(TEXTS[:3])).min() >= 0.99
    assert ModelSpec.parse(int8.spec.model_id) == replace(TINY, model="tiny-clip", runtime="onnx", precision="int8")


@pytest.mark.long
@pytest.mark.parametrize("precision, floor", [("fp32", 0.9999), ("int8", 0.99)])
def test_bundled_model_agrees(precision, floor):
    spec = ModelSpec("emoreact-emoji-s", "emoreact")
    reference = load_backbone(spec, "cpu")
    onnx = load_backbone(replace(spec, runtime="onnx", precision=precision), "cpu")
    images = _images(reference, 16)
    assert _cosines(onnx.encode_images(images), reference.encode_images(images)).min() >= floor
    assert _cosines(onnx.encode_texts(TEXTS[:3]), reference.encode_texts(TEXTS[:3])).min() >= floor


def test_int8_needs_the_onnx_runtime_and_names_are_checked():
    with pytest.raises(ModelLoadError, match="--runtime onnx"):
        replace(TINY, precision="int8")
    with pytest.raises(ModelLoadError, match="unknown runtime 'tensorrt'"):
        replace(TINY, runtime="tensorrt")
    with pytest.raises(ValueError, match="runtime must be one of"):
        PredictorConfig(runtime="tensorrt")


def _save_tiny_weights(path, seed: int):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = load_backbone(TINY, "cpu").model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _graphs(root) -> set:
    return {p.relative_to(root) for p in root.rglob("*.onnx")}


def test_graphs_are_cached_and_exported_again_when_the_weights_change(tmp_path, onnx_cache):
    folder = tmp_path / "weights"
    folder.mkdir()
    weights = folder / "tiny.safetensors"
    _save_tiny_weights(weights, seed=1)
    spec = ModelSpec(TINY_MODEL, str(weights), runtime="onnx")
    first = load_backbone(spec, "cpu")
    first_id, graph = first.spec.model_id, first.towers.image.path
    written = graph.stat().st_mtime_ns
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)  # the weights' folder is read-only: the graph is never beside them
    weights.chmod(stat.S_IRUSR)
    try:
        again = load_backbone(spec, "cpu")
        assert again.towers.image.path == graph and graph.stat().st_mtime_ns == written  # reused, not re-exported
        assert not any(p.suffix == ".onnx" for p in folder.iterdir())
    finally:
        folder.chmod(stat.S_IRWXU)
        weights.chmod(stat.S_IRUSR | stat.S_IWUSR)
    images = _images(first)
    before = first.encode_images(images)
    _save_tiny_weights(weights, seed=2)
    changed = load_backbone(spec, "cpu")
    assert changed.towers.image.path != graph  # new weights, new key, new export
    assert changed.spec.model_id != first_id
    reference = load_backbone(replace(spec, runtime="torch"), "cpu").encode_images(images)
    assert _cosines(changed.encode_images(images), reference).min() >= 0.9999
    assert _cosines(before, reference).min() < 0.9999  # the old graph would have given the old weights' vectors
    assert not list(graph.parent.glob(".*"))  # no temporary file left behind


def test_missing_onnxruntime_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    with pytest.raises(ModelLoadError, match=r'emoreact\[onnx\]'):
        load_backbone(replace(TINY, runtime="onnx"), "cpu")


def test_onnx_refuses_a_gpu_device():
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_backbone(replace(TINY, runtime="onnx"), "cuda")
    else:
        with pytest.raises(ModelLoadError, match="runs on the CPU"):
            load_backbone(replace(TINY, runtime="onnx"), "cuda")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, label_config):
    """(store, head) embedded and trained at int8."""
    root = tmp_path_factory.mktemp("int8")
    manifest = make_manifest(root / "data", synthetic_items(96, seed=5))
    emoreact.embed_source(manifest, root / "store", TINY, labels=label_config, device="cpu", config=FAST_EMBED,
                          runtime="onnx", precision="int8")
    emoreact.train(root / "store", root / "head", "linear", labels=label_config, device="cpu", epochs=5)
    return root / "store", root / "head"


@pytest.mark.long  # embeds a store and trains a head (and uses the session's)
def test_an_int8_store_is_served_at_int8_only(int8_run, trained, store_path):
    store, head = int8_run
    with Store.open(store) as opened:
        assert opened.model_id.endswith("+int8")
    with pytest.raises(StoreError, match="--precision int8"):
        emoreact.load(store, head, device="cpu")  # fp32 by default: refused, with the fix named
    with pytest.raises(HeadError, match="retrain"):
        emoreact.load(store, trained[0], device="cpu")  # a head of fp32 vectors on an int8 store
    with pytest.raises(StoreError, match="--precision fp32"):
        emoreact.load(store_path, trained[0], device="cpu", runtime="onnx", precision="int8")
    with emoreact.load(store, head, device="cpu", runtime="onnx", precision="int8") as predictor:
        picture = draw(("happy",), 7)
        result = predictor.predict(picture)
    assert set(result["emotion_scores"]) == set(predictor.head.label_config.names)


@pytest.mark.long
def test_a_head_alone_takes_its_precision_from_the_caller(int8_run):
    _, head = int8_run
    with pytest.raises(ModelLoadError, match="--precision int8"):
        emoreact.load(head=head, device="cpu")
    with emoreact.load(head=head, device="cpu", runtime="onnx", precision="int8") as predictor:
        assert predictor.backbone.spec.model_id.endswith("+int8")


def test_concurrent_exports_leave_one_whole_graph(tmp_path, onnx_cache):
    from emoreact.embed.runtime import cached_graph

    model = load_backbone(TINY, "cpu").model
    folder = tmp_path / "graphs"
    example = torch.zeros(2, 3, 64, 64)
    paths = {cached_graph(folder, "visual", "fp32", model.visual, example) for _ in range(2)}
    (folder / "visual-fp32.onnx").unlink()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:  # two callers at once: one exports, the other finds the whole graph
        paths |= set(pool.map(lambda _: cached_graph(folder, "visual", "fp32", model.visual, example), range(2)))
    assert paths == {folder / "visual-fp32.onnx"}
    assert sorted(os.listdir(folder)) == ["visual-fp32.onnx"]
    import onnx
    onnx.checker.check_model(str(folder / "visual-fp32.onnx"))


def test_quantising_leaves_the_files_beside_the_graph_alone(tmp_path, onnx_cache):
    """ONNX Runtime's quantiser writes and deletes "<input>-inferred.onnx" beside its input: another process
    quantising the same cached graph at that moment lost its file (a failure seen in CI). The file another
    process would have there now survives a quantisation."""
    from emoreact.embed.runtime import cached_graph

    model = load_backbone(TINY, "cpu").model
    folder = tmp_path / "graphs"
    cached_graph(folder, "visual", "fp32", model.visual, torch.zeros(2, 3, 64, 64))
    theirs = folder / "visual-fp32-inferred.onnx"
    theirs.write_bytes(b"another process's shape-inferred graph")
    cached_graph(folder, "visual", "int8", model.visual, torch.zeros(2, 3, 64, 64))
    assert theirs.read_bytes() == b"another process's shape-inferred graph"
    assert sorted(os.listdir(folder)) == ["visual-fp32-inferred.onnx", "visual-fp32.onnx", "visual-int8.onnx"]


_EXPORT_ONE = """
import sys
from pathlib import Path
import torch
from emoreact.embed import load_backbone
from emoreact.embed.runtime import cached_graph
from conftest import TINY
model = load_backbone(TINY, "cpu").model
print(cached_graph(Path(sys.argv[1]), "visual", "int8", model.visual, torch.zeros(2, 3, 64, 64)))
"""


@pytest.mark.subprocess
def test_two_processes_exporting_at_once_leave_whole_graphs(tmp_path):
    import subprocess
    from pathlib import Path

    folder = tmp_path / "graphs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    runs = [subprocess.Popen([sys.executable, "-c", _EXPORT_ONE, str(folder)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(folder / "visual-int8.onnx")}
    assert sorted(os.listdir(folder)) == ["visual-fp32.onnx", "visual-int8.onnx"]  # no temporary file left
    import onnx
    for name in ("visual-fp32.onnx", "visual-int8.onnx"):
        onnx.checker.check_model(str(folder / name))


@pytest.mark.long  # three runtimes, each embedded, trained on and served
def test_runtime_bench_reports_every_runtime_beside_torch_fp32():
    from emoreact.bench import runtime_bench

    result = runtime_bench.run(TINY_MODEL, seconds=0.3, images=8, rounds=1, demo_f1=False)
    variants = result[TINY_MODEL]["variants"]
    assert set(variants) == {"torch/fp32", "onnx/fp32", "onnx/int8"}
    for figures in variants.values():
        assert figures["model_only_images_per_s"] > 0 and figures["embed_job_images_per_s"] > 0
        for level in ("concurrency_1", "concurrency_16"):
            assert figures["api"][level]["requests"] > 0 and figures["api"][level]["errors"] == 0
        assert {"decode_ms", "preprocess_ms", "model_ms", "search_ms", "json_ms"} <= set(figures["api"]["breakdown_p50_ms"])
    assert variants["onnx/int8"]["model_id"].endswith("+int8")
    agreement = result["emoreact-emoji-s"]["agreement"]
    assert agreement["onnx/fp32"]["cosine_min"] >= 0.9999 and agreement["onnx/int8"]["cosine_min"] >= 0.99
    assert set(result["vs_torch_fp32"]) == {"onnx/fp32", "onnx/int8"}
