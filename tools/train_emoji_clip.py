"""Train EmoReact's small emoji CLIP (``emoreact-emoji-s``) from scratch on open-licensed emoji art.

The data is the caption corpus written by ``tools/emoji_data.py``: 64x64 RGB emoji images in three
styles (Noto/google, Twemoji/twitter, OpenMoji) with English captions from emojibase. The model is a
plain open_clip ``CLIP`` built from ``embed/model_configs/emoreact-emoji-s.json`` (a small
ModifiedResNet image tower: convolutions learn far more per image than a ViT on 4,400 images) and
trained with the CLIP contrastive loss (learnable temperature) on image-caption pairs: every step
each image is paired with one of its captions drawn at random.

Two choices make the features the same across artists, which is what the demo's leave-one-style-out
head needs (each was checked against plain ClipLoss in 200-step runs, see the model card):
``--group-styles`` puts all styles of an emoji in one batch and uses the multi-positive form of the
CLIP loss (UniCL), and ``--image-loss`` adds a SLIP-like image-image term whose positives are the
other artists' drawings of the same emoji. ``--style-aug`` blurs, posterises or outlines images.

Held-out rule: an emoji (hexcode, all its styles) is held out when
``int(sha256(hexcode).hexdigest(), 16) % 10 == 0`` -- about 10% of emojis, fixed for all time and
never trained on. Zero-shot figures on those emojis measure generalisation to unseen emojis.

Outputs (in --out):
  emoreact-emoji-s.safetensors  fp16 weights, keys exactly as ``model.state_dict()``; load with
                                ``open_clip.create_model('emoreact-emoji-s', pretrained=<file>)``
  training_log.json             config, per-step loss/lr/temperature, timings, evaluation
  loss_curve.png                loss per step (raw and smoothed)

Usage (the command that made the shipped weights; 67 minutes on 2 CPU cores):
    python tools/train_emoji_clip.py --data ~/.cache/emoreact/emoji-train --out embed/weights \
        --batch-size 128 --lr 1e-3 --epochs 110 --group-styles --image-loss 2.0 --style-aug 0.2 \
        --probe-every 250

``--bench-steps N`` only times N training steps (of another architecture with ``--config other.json``)
and exits, to pick a model size that trains in the time budget on this machine.
``tools/emoji_clip_eval.py`` re-runs the evaluation on saved weights.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_clip_common import (CLIP_MEAN, CLIP_STD, CONFIG_PATH, DEMO_LABELS, HELDOUT_MOD, MODEL_NAME, REPO,  # noqa: E402,F401
                               cross_style_eval, demo_items, encode_images, is_heldout, load_corpus)

log = logging.getLogger("train_emoji_clip")

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_images(data: Path, rows: list[dict]) -> torch.Tensor:
    """Gives all images as one (N, 3, 64, 64) uint8 tensor (about 60 MB): no loader needed."""
    out = torch.empty(len(rows), 3, 64, 64, dtype=torch.uint8)
    for i, r in enumerate(rows):
        with Image.open(data / r["path"]) as im:
            im = im.convert("RGB")
            if im.size != (64, 64):
                im = im.resize((64, 64), Image.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out


# Emojis whose meaning flips with a mirror image (arrows, clock times, "facing right") or that hold
# text/symbols are never flipped: the mirrored picture would no longer match its caption.
NO_FLIP = re.compile(r"\b(left|right|leftwards|rightwards|arrow|arrows|clock|o.clock|thirty|facing|button|symbol|sign|letter|letters|"
                     r"ideograph|number|numbers|latin|input|copyright|registered|trade mark|keycap|"
                     r"japanese|chinese|kanji|cjk|text|word|abc|abcd|1234)\b", re.IGNORECASE)


def can_flip(row: dict) -> bool:
    return not NO_FLIP.search(" ".join(row["captions"]))


def augment(x: torch.Tensor, gen: torch.Generator, args, flip_ok: torch.Tensor | None = None) -> torch.Tensor:
    """Emoji-suited augmentation on a uint8 batch; gives normalised float images.

    One affine warp per image = random resized crop (area scale args.crop_min..1, aspect 3/4..4/3)
    + rotation (+-args.rotate degrees) + horizontal flip (only where `flip_ok`); uncovered corners are white, like the
    artwork's background. Then mild brightness/contrast, the same factor on all three channels:
    hue and saturation are never changed (colour carries emotion: red angry face, blue cold face).
    """
    n = x.shape[0]
    x = x.float() / 255.0
    u = lambda: torch.rand(n, generator=gen)  # noqa: E731
    area = args.crop_min + (1 - args.crop_min) * u()
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u()
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop size as a fraction of the image
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * u() - 1)  # crop centre in [-1, 1] coordinates, crop stays inside
    cy = (1 - h) * (2 * u() - 1)
    angle = torch.deg2rad(args.rotate * (2 * u() - 1))
    flip = torch.where(u() < 0.5, -1.0, 1.0)
    if flip_ok is not None:
        flip = torch.where(flip_ok, flip, torch.ones_like(flip))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * w * flip
    theta[:, 0, 1] = -sin * h
    theta[:, 1, 0] = sin * w * flip
    theta[:, 1, 1] = cos * h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0
    bright = 1 + args.jitter * (2 * u() - 1)
    contrast = 1 + args.jitter * (2 * u() - 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(n, 1, 1, 1)
    x = (x - gray) * contrast.view(n, 1, 1, 1) + gray
    x = (x * bright.view(n, 1, 1, 1)).clamp(0, 1)
    if args.style_aug:
        x = style_augment(x, gen, args.style_aug)
    return normalize(x)


def style_augment(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """Pushes an image towards another artist's look, each change with probability `p`.

    The three styles differ mostly in rendering: Noto shades with gradients, Twemoji is flat, and
    OpenMoji draws thick black outlines. So: blur (soft shading), posterise (flat colour) and dark
    outlines along strong edges. Colours and shapes, which carry the meaning, are kept.
    """
    n = x.shape[0]
    pick = lambda: (torch.rand(n, generator=gen) < p).view(n, 1, 1, 1)  # noqa: E731
    sigma = 0.5 + 0.8 * torch.rand(n, generator=gen)
    k = torch.arange(-2, 3, dtype=torch.float32)
    w = torch.exp(-(k[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # (n, 5): one separable Gaussian per image
    xb = x.reshape(1, n * 3, *x.shape[2:])
    kx = w.repeat_interleave(3, 0).view(n * 3, 1, 1, 5)
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kx, groups=n * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=n * 3)
    x = torch.where(pick(), xb.view_as(x), x)
    levels = torch.randint(3, 7, (n, 1, 1, 1), generator=gen).float()
    x = torch.where(pick(), torch.round(x * levels) / levels, x)
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), sobel)
    gy = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), sobel.transpose(2, 3))
    threshold = (0.6 + 0.6 * torch.rand(n, generator=gen)).view(n, 1, 1, 1)
    edge = ((gx ** 2 + gy ** 2).sqrt() > threshold).float()
    outlined = x * (1 - edge) + 0.1 * edge
    return torch.where(pick(), outlined, x).clamp(0, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_batches(hexcodes: list[str], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches over the training images, shuffled, with no emoji twice in a batch.

    The styles of one emoji share captions; two of them in one batch would be false negatives for
    the contrastive loss, so a repeat is deferred to the next batch.
    """
    order = rng.permutation(len(hexcodes)).tolist()
    batches, current, seen, deferred = [], [], set(), []
    for i in order:
        queue = deferred + [i]
        deferred = []
        for j in queue:
            if hexcodes[j] in seen:
                deferred.append(j)
                continue
            current.append(j)
            seen.add(hexcodes[j])
            if len(current) == batch_size:
                batches.append(np.array(current))
                current, seen = [], set()
    rest = current + deferred
    if len(rest) >= batch_size // 2:  # a short last batch is kept only when it is not tiny
        final, seen = [], set()
        for j in rest:
            if hexcodes[j] not in seen:
                final.append(j)
                seen.add(hexcodes[j])
        batches.append(np.array(final))
    return batches


def make_group_batches(hexcodes: list[str], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches of whole emojis: all styles of an emoji land in the same batch.

    Used with `multi_positive_clip_loss`, where the styles of one emoji are each other's positives,
    so every step teaches directly that three drawings of one emoji mean the same thing.
    """
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hexcodes):
        groups.setdefault(h, []).append(i)
    keys = sorted(groups)
    batches, current = [], []
    for k in rng.permutation(len(keys)):
        current.extend(groups[keys[k]])
        if len(current) >= batch_size:
            batches.append(np.array(current))
            current = []
    if len(current) >= batch_size // 2:
        batches.append(np.array(current))
    return batches


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                             group: torch.Tensor) -> torch.Tensor:
    """The CLIP contrastive loss when several pairs in a batch share a meaning (UniCL, Yang et al. 2022).

    Image i and caption j are a positive pair when they belong to the same emoji; the target of each
    row (image -> captions) and each column (caption -> images) spreads evenly over its positives.
    With one pair per emoji it is exactly open_clip's ClipLoss. Its floor is ln(styles per emoji),
    not 0.
    """
    logits = scale * img @ txt.T
    pos = (group[:, None] == group[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)  # symmetric, so it serves both directions
    to_text = -(target * logits.log_softmax(dim=1)).sum(1).mean()
    to_image = -(target * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (to_text + to_image) / 2


def cross_style_image_loss(img: torch.Tensor, scale: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Image-image contrastive term: the other styles of the same emoji are an image's positives.

    SLIP (Mu et al. 2022) adds a self-supervised image-image loss to CLIP's for data efficiency; here
    the two views are two artists' drawings of the same emoji instead of two crops of one image.
    Images whose emoji has no other style in the batch have no positive and are left out.
    """
    logits = scale * img @ img.T
    eye = torch.eye(len(group), dtype=torch.bool)
    logits = logits.masked_fill(eye, float("-inf"))
    pos = (group[:, None] == group[None, :]) & ~eye
    has = pos.any(1)
    if not has.any():
        return logits.new_zeros(())
    target = pos[has].float() / pos[has].sum(1, keepdim=True)
    logp = logits[has].log_softmax(dim=1).masked_fill(eye[has], 0.0)
    return -(target * logp).sum(1).mean()


def build_model(config_path: Path, name: str):
    import open_clip

    open_clip.add_model_config(str(config_path))
    return open_clip.create_model(name, pretrained=None)


def demo_probe(demo: Path, model: torch.nn.Module):
    """Gives a function that measures the demo set's cross-style neighbours with the current weights."""
    import open_clip

    items = demo_items(demo)
    transform = open_clip.image_transform(model.visual.image_size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)

    def probe() -> dict:
        model.eval()
        res = cross_style_eval(encode_images(model, transform, [demo / it["path"] for it in items]), items)
        model.train()
        return {"same_emoji": res["mean_same_emoji"], "label_macro_f1": res["mean_label_macro_f1"]}

    return probe


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's convention: no weight decay on gains, biases, norms and the temperature."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: int, total: int, warmup: int, base: float, final_frac: float = 0.0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_fp16(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    os.chmod(path, 0o644)  # safetensors creates the file owner-only; it is meant to be shipped


def plot_loss(steps: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.array([r["step"] for r in steps])
    loss = np.array([r["loss"] for r in steps])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(s, loss, color="#9ab", lw=0.8, label="loss per step")
    ax.plot(s[k - 1:], smooth, color="#c33", lw=1.8, label=f"moving average ({k} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (CLIP term + image-image term, if on)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(s, [r["temperature"] for r in steps], color="#585", lw=1.0, ls="--", label="logit scale")
    ax2.set_ylabel("logit scale (1/temperature)", color="#585")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def portable(path) -> str:
    """A path as it is written in the shipped log: relative to the repo, or under ~, never absolute."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(path)
    for base, shown in ((REPO, ""), (Path.home(), "~/")):
        if p.resolve().is_relative_to(base.resolve()):
            return shown + str(p.resolve().relative_to(base.resolve()))
    return p.name


def write_log(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("~/.cache/emoreact/emoji-train").expanduser())
    p.add_argument("--out", type=Path, default=REPO / "embed" / "weights")
    p.add_argument("--config", type=Path, default=CONFIG_PATH)
    p.add_argument("--demo", type=Path, default=REPO / "demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--crop-min", type=float, default=0.7, help="RandomResizedCrop area scale lower bound")
    p.add_argument("--rotate", type=float, default=10.0, help="max rotation in degrees")
    p.add_argument("--jitter", type=float, default=0.15, help="brightness/contrast factor range +-")
    p.add_argument("--init-temperature", type=float, default=None,
                   help="initial logit scale (1/temperature); default open_clip's 1/0.07 = 14.3")
    p.add_argument("--group-styles", action="store_true",
                   help="batch whole emojis (all styles) with the multi-positive CLIP loss")
    p.add_argument("--style-aug", type=float, default=0.0,
                   help="probability of each style change (blur, posterise, outlines); 0 = off")
    p.add_argument("--image-loss", type=float, default=0.0,
                   help="with --group-styles: weight of the cross-style image-image term (SLIP-like)")
    p.add_argument("--probe-every", type=int, default=0,
                   help="every N steps, log the demo set's cross-style nearest-neighbour figures")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="(smoke test) stop after this many steps")
    p.add_argument("--bench-steps", type=int, default=0, help="only time this many steps, then exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.WARNING)  # open_clip logs through the root logger
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    import open_clip

    cfg = json.loads(args.config.read_text())
    name = args.config.stem
    config_path = args.config

    t0 = time.time()
    rows = load_corpus(args.data)
    train_idx = [i for i, r in enumerate(rows) if not is_heldout(r["hexcode"])]
    held_hex = sorted({r["hexcode"] for r in rows if is_heldout(r["hexcode"])})
    all_hex = sorted({r["hexcode"] for r in rows})
    log.info("%d images, %d emojis; held out %d emojis (%d images); training on %d images",
             len(rows), len(all_hex), len(held_hex), len(rows) - len(train_idx), len(train_idx))
    train_rows = [rows[i] for i in train_idx]
    images = load_images(args.data, train_rows)
    open_clip.add_model_config(str(config_path))
    flip_ok = torch.tensor([can_flip(r) for r in train_rows])
    tokenizer = open_clip.get_tokenizer(name)  # open_clip's default SimpleTokenizer, context from the config
    # every caption tokenised once; caption_index[i] lists image i's rows in `tokens`
    captions, caption_index = [], []
    for r in train_rows:
        caption_index.append(list(range(len(captions), len(captions) + len(r["captions"]))))
        captions.extend(r["captions"])
    context = cfg["text_cfg"]["context_length"]
    tokens = tokenizer(captions)
    assert tokens.shape[1] == context
    log.info("loaded %d images and %d captions in %.1fs (%d never flipped)", len(train_rows), len(captions),
             time.time() - t0, int((~flip_ok).sum()))

    model = build_model(config_path, name)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters (%.1f MB in fp16)", name, n_params / 1e6, n_params * 2 / 1e6)
    if args.init_temperature:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(args.init_temperature))
    model.train()
    batcher = make_group_batches if args.group_styles else make_batches
    emoji_index = {h: i for i, h in enumerate(all_hex)}
    emoji_id = torch.tensor([emoji_index[r["hexcode"]] for r in train_rows])
    probe = demo_probe(args.demo, model) if args.probe_every else None
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    hexcodes = [r["hexcode"] for r in train_rows]
    steps_per_epoch = len(batcher(hexcodes, args.batch_size, np.random.default_rng(0)))
    epochs = 1 if args.bench_steps else args.epochs
    total = args.bench_steps or args.max_steps or steps_per_epoch * epochs
    warmup = max(1, round(args.warmup_frac * total))
    if warmup < 15 and not args.bench_steps:
        log.warning("only %d warmup steps: a 5-epoch run with 4 warmup steps at lr 1.5e-3 collapsed "
                    "(loss stuck at ln(batch)); use more epochs, --warmup-frac or a lower --lr", warmup)
    log.info("%d epochs x %d steps = %d steps (warmup %d), batch %d", epochs, steps_per_epoch, total, warmup,
             args.batch_size)

    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "training_log.json"
    record = {
        "model": MODEL_NAME, "model_cfg": cfg, "parameters": n_params,
        "command": "python tools/train_emoji_clip.py " + " ".join(
            portable(a) for a in (sys.argv[1:] if argv is None else argv)),
        "args": {k: portable(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {"images": len(rows), "emojis": len(all_hex), "heldout_emojis": len(held_hex),
                 "heldout_images": len(rows) - len(train_idx), "train_images": len(train_rows),
                 "heldout_rule": f"int(sha256(hexcode).hexdigest(), 16) % {HELDOUT_MOD} == 0"},
        "torch": torch.__version__, "open_clip": open_clip.__version__, "threads": args.threads,
        "steps_per_epoch": steps_per_epoch, "epochs": epochs, "total_steps": total, "warmup_steps": warmup,
        "steps": [],
    }
    step, t_train, done = 0, time.time(), False
    for epoch in range(epochs):
        for batch in batcher(hexcodes, args.batch_size, rng):
            if step >= total:
                done = True
                break
            ts = time.time()
            lr = lr_at(step, total, warmup, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            pick = [caption_index[i][int(rng.integers(len(caption_index[i])))] for i in batch]
            idx = torch.from_numpy(batch)
            x = augment(images[idx], gen, args, flip_ok[idx])
            t = tokens[torch.tensor(pick)]
            img_f, txt_f, scale = model(x, t)
            # without --group-styles no emoji is twice in a batch, so this is exactly open_clip's ClipLoss
            loss = multi_positive_clip_loss(img_f, txt_f, scale, emoji_id[idx])
            if args.image_loss:
                loss = loss + args.image_loss * cross_style_image_loss(img_f, scale, emoji_id[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            if probe and (step % args.probe_every == 0 or step == total):
                record.setdefault("probes", []).append({"step": step, **probe()})
                log.info("probe at step %d: %s", step, json.dumps(record["probes"][-1]))
            if step == warmup + 30 and not args.group_styles and loss.item() > math.log(len(batch)) - 0.02:
                raise SystemExit(f"training collapsed: loss {loss.item():.4f} is still ln(batch) = "
                                 f"{math.log(len(batch)):.4f} after {step} steps; lower --lr or warm up longer")
            record["steps"].append({"step": step, "epoch": epoch + 1, "loss": round(loss.item(), 5),
                                    "lr": lr, "temperature": round(model.logit_scale.exp().item(), 3),
                                    "batch": len(batch), "seconds": round(time.time() - ts, 3)})
            if step % 10 == 0 or step == total:
                el = time.time() - t_train
                log.info("step %d/%d epoch %d loss %.4f scale %.1f lr %.2e  %.2fs/step, eta %.1f min",
                         step, total, epoch + 1, loss.item(), model.logit_scale.exp().item(), lr, el / step,
                         el / step * (total - step) / 60)
                if not args.bench_steps:
                    record["train_seconds"] = round(el, 1)
                    write_log(log_path, record)
        if done:
            break
    train_seconds = time.time() - t_train
    if args.bench_steps:
        per = [r["seconds"] for r in record["steps"][1:]]
        print(json.dumps({"name": name, "params_M": round(n_params / 1e6, 2), "fp16_MB": round(n_params * 2 / 1e6, 1),
                          "sec_per_step_median": round(float(np.median(per)), 3),
                          "sec_per_step_mean": round(float(np.mean(per)), 3), "steps_per_epoch": steps_per_epoch}))
        return 0

    record["train_seconds"] = round(train_seconds, 1)
    last = [r["loss"] for r in record["steps"][-steps_per_epoch:]]
    record["final_loss"] = round(record["steps"][-1]["loss"], 4)
    record["final_epoch_mean_loss"] = round(float(np.mean(last)), 4)
    weights = args.out / f"{MODEL_NAME}.safetensors"
    save_fp16(model, weights, {"format": "pt", "model": MODEL_NAME, "model_cfg": json.dumps(cfg),
                               "seed": str(args.seed), "steps": str(total),
                               "heldout_rule": record["data"]["heldout_rule"]})
    record["weights_bytes"] = weights.stat().st_size
    log.info("trained %d steps in %.1f min; saved %s (%.1f MB)", total, train_seconds / 60, weights,
             weights.stat().st_size / 1e6)
    plot_loss(record["steps"], args.out / "loss_curve.png",
              f"{MODEL_NAME}: {total} steps, {epochs} epochs, batch {args.batch_size}")
    write_log(log_path, record)

    # evaluate exactly what ships: reload the fp16 file through open_clip
    from emoji_clip_eval import evaluate

    t_eval = time.time()
    record["eval"] = evaluate(weights, args.config, args.data, args.demo, seed=args.seed, threads=args.threads)
    record["eval_seconds"] = round(time.time() - t_eval, 1)
    write_log(log_path, record)
    log.info("evaluation: %s", json.dumps(record["eval"]["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
