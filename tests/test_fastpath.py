"""The tensor input path agrees with the PIL path (on the CPU here; on the GPU where there is one)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_EMBED
from emoreact.embed import EmbedConfig, Record, run_embed_job
from emoreact.embed.fastpath import decode_jpegs, fast_path_eligible, preprocess_tensors
from emoreact.embed.models import Preprocess
from emoreact.index import Store
from synthetic import draw


def jpeg(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def photos(count=12):
    return [jpeg(draw(("happy", "sad", "fear")[n % 3:n % 3 + 1], seed=n, size=96).resize((320, 240))) for n in range(count)]


def test_tensor_preprocessing_matches_pil_pixels():
    from open_clip.transform import image_transform

    pre = Preprocess((224, 224), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    reference = image_transform(224, is_train=False, mean=pre.mean, std=pre.std)
    for data in photos(4):
        pil = reference(Image.open(io.BytesIO(data)).convert("RGB"))
        [decoded] = decode_jpegs([data], torch.device("cpu"))
        ours = preprocess_tensors([decoded], pre)[0]
        assert ours.shape == pil.shape
        assert float((ours - pil).abs().mean()) < 0.02  # in normalised units: under 1.5 grey levels


def test_eligibility_sends_odd_files_to_the_safe_path():
    assert fast_path_eligible(photos(1)[0], 10**7)
    assert not fast_path_eligible(jpeg(Image.new("CMYK", (8, 8))), 10**7)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert not fast_path_eligible(jpeg(Image.new("RGB", (8, 8)), exif=exif.tobytes()), 10**7)
    assert not fast_path_eligible(photos(1)[0], 100)
    assert not fast_path_eligible(b"\x89PNG\r\n\x1a\n", 10**7)


def test_job_with_fast_path_matches_pil_job(tmp_path, backbone, label_config):
    source = tmp_path / "src"
    source.mkdir()
    for n, data in enumerate(photos()):
        (source / f"{n}.jpg").write_bytes(data)
    (source / "broken.jpg").write_bytes(photos(1)[0][:300])
    records = [Record(p, None) for p in sorted(source.iterdir())]
    vectors = {}
    for fast in (False, True):
        store = Store.create_or_resume(tmp_path / str(fast), backbone.spec.model_id, backbone.dim, {},
                                       label_config.names)
        report = run_embed_job(records, store, backbone, EmbedConfig(**{**FAST_EMBED.__dict__, "fast_jpeg": fast}))
        assert report.added == 12 and sum(report.skipped.values()) == 1
        vectors[fast] = store.vectors()
    cosine = (vectors[True] * vectors[False]).sum(axis=1)
    assert float(cosine.mean()) >= 0.99, cosine


@pytest.mark.gpu
def test_gpu_decode_matches_cpu_path(backbone):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    datas = photos()
    gpu = preprocess_tensors(decode_jpegs(datas, torch.device("cuda")), backbone.preprocess).cpu()
    cpu = torch.stack([backbone.transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas])
    cosine = (backbone.encode_images(gpu) * backbone.encode_images(cpu)).sum(1)
    assert float(cosine.mean()) >= 0.99


def _embed(tmp_path, name, backbone, records, **config):
    store = Store.create_or_resume(tmp_path / name, backbone.spec.model_id, backbone.dim, {}, [])
    report = run_embed_job(records, store, backbone, EmbedConfig(**{**FAST_EMBED.__dict__, **config}))
    try:
        return report, store.vectors(), [item.path for item in store.items()]
    finally:
        store.close()


def _photo_records(tmp_path, count=40):
    source = tmp_path / "src"
    source.mkdir()
    for n, data in enumerate(photos(count)):
        (source / f"{n:03d}.jpg").write_bytes(data)
    (source / "broken.jpg").write_bytes(photos(1)[0][:300])
    return [Record(p, None) for p in sorted(source.iterdir())]


def _decoding_ahead_matches_decoding_in_turn(tmp_path, backbone):
    records = _photo_records(tmp_path)
    in_turn = _embed(tmp_path, "in_turn", backbone, records, fast_jpeg=True, batch_size=8, decode_ahead=0)
    ahead = _embed(tmp_path, "ahead", backbone, records, fast_jpeg=True, batch_size=8, decode_ahead=2)
    assert ahead[0].added == in_turn[0].added == 40 and ahead[0].skipped == in_turn[0].skipped
    assert ahead[2] == in_turn[2]  # the same rows in the same order
    assert np.allclose(ahead[1], in_turn[1], atol=1e-5)


def test_decoding_ahead_gives_the_same_store_as_decoding_in_turn(tmp_path, backbone):
    _decoding_ahead_matches_decoding_in_turn(tmp_path, backbone)


def test_a_failure_while_decoding_ahead_reaches_the_job_and_stops_the_thread(tmp_path, backbone, monkeypatch):
    import threading

    from emoreact.embed import job

    real, calls = job._decode_fast, []

    def fail_on_the_third_batch(batch, *args):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("decoder fault planted by the test")
        real(batch, *args)

    monkeypatch.setattr(job, "_decode_fast", fail_on_the_third_batch)
    with pytest.raises(RuntimeError, match="planted by the test"):
        _embed(tmp_path, "store", backbone, _photo_records(tmp_path), fast_jpeg=True, batch_size=8, decode_ahead=2)
    assert not [t for t in threading.enumerate() if t.name == "emoreact-decode-ahead"]
    assert len(calls) == 3  # it stopped at the fault, not after reading everything


def test_a_failure_of_the_job_stops_the_thread_decoding_ahead(tmp_path, backbone, monkeypatch):
    import threading

    from emoreact.embed.writer import ShardWriter

    def fail(*args):
        raise OSError("disk full, planted by the test")

    monkeypatch.setattr(ShardWriter, "add", fail)
    try:
        _embed(tmp_path, "store", backbone, _photo_records(tmp_path), fast_jpeg=True, batch_size=8, decode_ahead=2)
    except OSError as exc:
        # Checked while the caller still holds the error, whose traceback keeps the job's frame alive.
        assert "planted by the test" in str(exc)
        assert not [t for t in threading.enumerate() if t.name == "emoreact-decode-ahead"]
    else:
        pytest.fail("the job did not raise the writer's error")


@pytest.mark.gpu
def test_gpu_decoding_ahead_on_its_own_stream_matches_decoding_in_turn(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from conftest import TINY
    from emoreact.embed import load_backbone

    _decoding_ahead_matches_decoding_in_turn(tmp_path, load_backbone(TINY, "cuda"))
