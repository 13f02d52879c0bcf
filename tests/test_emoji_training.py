"""The losses of tools/train_emoji_clip.py, which made the bundled emoji CLIP."""
import sys
from pathlib import Path

import torch
from open_clip.loss import ClipLoss

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from train_emoji_clip import cross_style_image_loss, multi_positive_clip_loss  # noqa: E402


def _features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.functional.normalize
    return norm(torch.randn(n, 16, generator=g), dim=-1), norm(torch.randn(n, 16, generator=g), dim=-1)


def test_with_one_pair_per_emoji_the_loss_is_open_clips_clip_loss():
    img, txt = _features(12)
    scale = torch.tensor(14.3)
    ours = multi_positive_clip_loss(img, txt, scale, torch.arange(12))
    assert torch.allclose(ours, ClipLoss()(img, txt, scale), atol=1e-6)


def test_drawings_of_one_emoji_are_each_others_positives():
    img, txt = _features(6)
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    scale = torch.tensor(10.0)
    apart = multi_positive_clip_loss(img, txt, scale, group)
    together = img.clone()
    together[1] = together[2] = together[0]  # emoji 0's three drawings made identical
    txt_together = txt.clone()
    txt_together[:3] = together[:3]
    assert multi_positive_clip_loss(together, txt_together, scale, group) < apart
    # images with no other drawing of their emoji in the batch have no image-image positive
    assert cross_style_image_loss(img, scale, torch.arange(6)) == 0
    assert cross_style_image_loss(together, scale, group) < cross_style_image_loss(img, scale, group)
