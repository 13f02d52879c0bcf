"""Train the second-edition emoji CLIP (``emoreact-emoji-s2``) from scratch, resumable across sessions.

The same architecture as ``emoreact-emoji-s`` (``tools/model_configs/emoreact-emoji-s2.json``, a copy
of the first edition's config: same size, same inference cost) and the same losses (multi-positive CLIP
loss over whole emojis + the SLIP-like cross-style image-image term, see ``tools/train_emoji_clip.py``),
on a wider corpus (``tools/emoji_corpus2.py``: eight styles for training, ``emojione`` held out of
training entirely), captions that include short phrases (``tools/emoji_captions2.py``) and feed-like
augmentation (``tools/emoji_augment.py``).

Every epoch each emoji group (skin-tone and gender variants with their base) contributes
``styles_per_emoji`` images: that many of its styles drawn at random, one variant each. Emoji groups
held out by the first edition's rule (``is_heldout(group)``, ~10%) are never trained on. An image and a
caption are positives when they are the same emoji or the caption text is the same ("i'm so scared"
fits several faces).

Resuming: ``<out>/checkpoint.pt`` holds the model, the optimiser, the step, the epoch's batch plan and
position, and the numpy and torch random states; it is replaced atomically every
``--checkpoint-minutes`` and on SIGTERM. ``--resume`` continues from it exactly (the same numbers as a
run that never stopped, on the same thread count) and refuses a checkpoint of another recipe.
Only one trainer may hold an out folder at a time (a lock file).

Outputs in --out: checkpoint.pt, recipe.json, training_log.json (recipe, per-step loss/lr/scale, session
timings, probes), and when done emoreact-emoji-s2.safetensors (fp16, keys as model.state_dict()).

Usage (the run: see embed/weights/MODEL_CARD_s2.md for the exact command):
    nice -n 19 python tools/train_emoji_clip2.py --data DATA --out OUT --resume
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_augment import FeedAug, feed_augment, on_white  # noqa: E402
from emoji_clip_common import CLIP_MEAN, CLIP_STD, is_heldout  # noqa: E402
from emoji_corpus2 import HOLDOUT_STYLE, TRAIN_STYLES  # noqa: E402
from train_emoji_clip import (build_model, can_flip, cross_style_image_loss, lr_at, normalize,  # noqa: E402
                              param_groups, save_fp16, style_augment, write_log)

log = logging.getLogger("train_emoji_clip2")
TOOLS = Path(__file__).resolve().parent
MODEL_NAME = "emoreact-emoji-s2"
CONFIG = TOOLS / "model_configs" / f"{MODEL_NAME}.json"
CHECKPOINT = "checkpoint.pt"
PROBE_POOL = ("google", "twitter", "openmoji")  # the held-out style is matched against these


@dataclass(frozen=True)
class Recipe:
    """Everything that fixes the trained numbers; a checkpoint resumes only under an equal recipe."""

    styles: tuple[str, ...] = TRAIN_STYLES   # styles trained on (HOLDOUT_STYLE never)
    seed: int = 0
    epochs: int = 60
    batch_size: int = 128                    # images per step (whole emojis, so a few more)
    styles_per_emoji: int = 4                # images of one emoji per epoch, each a different style
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    image_loss: float = 2.0                  # weight of the cross-style image-image term
    phrase_prob: float = 0.4                 # chance to train on a phrase caption when the emoji has some
    jitter: float = 0.15                     # brightness/contrast factor range +-
    style_aug: float = 0.2                   # chance of each style change (blur, posterise, outlines)
    aug: FeedAug = field(default_factory=FeedAug)
    max_steps: int = 0                       # 0: epochs x steps per epoch; else exactly this many steps

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class Corpus:
    """Training images with their emoji group and caption ids (row-aligned arrays)."""

    images: np.ndarray          # (N, 64, 64, 4) uint8 RGBA
    group: np.ndarray           # (N,) int64 index into group_names
    style: np.ndarray           # (N,) int64 index into styles
    flip_ok: np.ndarray         # (N,) bool: mirroring keeps the meaning
    names: list[list[int]]      # per row: ids of its name/tag captions in `captions`
    phrases: list[list[int]]    # per row: ids of its phrase captions (may be empty)
    captions: list[str]
    group_names: list[str]
    styles: tuple[str, ...]


def load_corpus(data: Path, styles, keep_group=lambda g: not is_heldout(g)) -> Corpus:
    """Gives the rows of `styles` in `data` (tools/emoji_corpus2.py's folder) whose group is kept."""
    table = json.loads((data / "captions.json").read_text())
    parts, rows = [], []
    for s, style in enumerate(styles):
        if not (data / f"{style}.npy").exists():
            raise SystemExit(f"{data / style}.npy is missing: run tools/emoji_corpus2.py --out {data}")
        style_rows = [json.loads(line) for line in (data / f"{style}.jsonl").read_text().splitlines()]
        keep = [i for i, r in enumerate(style_rows) if keep_group(r["group"])]
        parts.append(np.load(data / f"{style}.npy", mmap_mode="r")[keep])
        rows.extend({**style_rows[i], "style": s} for i in keep)
    captions, cid = [], {}

    def ids(texts):
        return [cid.setdefault(t, len(cid)) for t in texts]

    names = [ids(table[r["base"]]["names"]) for r in rows]
    phrases = [ids(table[r["base"]]["phrases"]) for r in rows]
    captions = list(cid)
    group_names = sorted({r["group"] for r in rows})
    gid = {g: i for i, g in enumerate(group_names)}
    return Corpus(images=np.concatenate(parts) if parts else np.empty((0, 64, 64, 4), np.uint8),
                  group=np.array([gid[r["group"]] for r in rows], np.int64),
                  style=np.array([r["style"] for r in rows], np.int64),
                  flip_ok=np.array([can_flip({"captions": table[r["base"]]["names"]}) for r in rows]),
                  names=names, phrases=phrases, captions=captions, group_names=group_names, styles=tuple(styles))


def corpus_digest(data: Path, styles) -> str:
    """Gives a sha256 over the captions and each style's rows and image file size: resuming on other data is refused."""
    h = hashlib.sha256((data / "captions.json").read_bytes())
    for style in styles:
        h.update((data / f"{style}.jsonl").read_bytes())
        h.update(str((data / f"{style}.npy").stat().st_size).encode())
    return h.hexdigest()


def epoch_batches(corpus: Corpus, recipe: Recipe, rng: np.random.Generator) -> list[list[int]]:
    """One epoch's batches: groups in random order, each with up to styles_per_emoji styles, one variant each."""
    by_group: dict[int, dict[int, list[int]]] = {}
    for i, (g, s) in enumerate(zip(corpus.group.tolist(), corpus.style.tolist())):
        by_group.setdefault(g, {}).setdefault(s, []).append(i)
    keys = sorted(by_group)
    batches, current = [], []
    for k in rng.permutation(len(keys)).tolist():
        styles = by_group[keys[k]]
        present = sorted(styles)
        chosen = rng.choice(len(present), size=min(recipe.styles_per_emoji, len(present)), replace=False)
        for c in sorted(chosen.tolist()):
            variants = styles[present[c]]
            current.append(variants[int(rng.integers(len(variants)))])
        if len(current) >= recipe.batch_size:
            batches.append(current)
            current = []
    if len(current) >= recipe.batch_size // 2:
        batches.append(current)
    return batches


def positives_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Multi-positive CLIP loss (UniCL): pos[i, j] says image i and caption j match; (B, B) bool."""
    logits = scale * img @ txt.T
    p = pos.float()
    to_text = -((p / p.sum(1, keepdim=True)) * logits.log_softmax(dim=1)).sum(1).mean()
    to_image = -((p.T / p.T.sum(1, keepdim=True)) * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (to_text + to_image) / 2


def make_inputs(corpus: Corpus, batch: list[int], recipe: Recipe, rng: np.random.Generator,
                gen: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Gives the augmented, normalised (B, 3, 64, 64) images and each image's caption id."""
    picks = []
    for i in batch:
        pool = corpus.phrases[i] if corpus.phrases[i] and rng.random() < recipe.phrase_prob else corpus.names[i]
        picks.append(pool[int(rng.integers(len(pool)))])
    x = np.stack([feed_augment(np.asarray(corpus.images[i]), rng, recipe.aug, bool(corpus.flip_ok[i]))
                  for i in batch])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    n = x.shape[0]
    bright = 1 + recipe.jitter * (2 * torch.rand(n, generator=gen) - 1)
    contrast = 1 + recipe.jitter * (2 * torch.rand(n, generator=gen) - 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(n, 1, 1, 1)
    x = ((x - gray) * contrast.view(n, 1, 1, 1) + gray) * bright.view(n, 1, 1, 1)
    x = x.clamp(0, 1)
    if recipe.style_aug:
        x = style_augment(x, gen, recipe.style_aug)
    return normalize(x), picks


def save_checkpoint(path: Path, state: dict) -> None:
    """Writes the checkpoint beside `path`, then renames it over `path` (a kill leaves the old one)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def heldout_probe(model, data: Path) -> dict:
    """Nearest-neighbour figures for the held-out style: each emojione base drawing (on white) against
    the PROBE_POOL drawings; how often the neighbour is the same emoji, over all and unseen emojis."""
    feats, groups, styles = [], [], []
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for style in (HOLDOUT_STYLE, *PROBE_POOL):
            rows = [json.loads(line) for line in (data / f"{style}.jsonl").read_text().splitlines()]
            keep = [i for i, r in enumerate(rows) if r["hexcode"] == r["base"]]
            images = np.load(data / f"{style}.npy", mmap_mode="r")
            for a in range(0, len(keep), 512):
                x = np.stack([on_white(np.asarray(images[i])) for i in keep[a:a + 512]])
                x = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                feats.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1))
            groups += [rows[i]["group"] for i in keep]
            styles += [style] * len(keep)
    model.train(was_training)
    f, groups, styles = torch.cat(feats), np.array(groups), np.array(styles)
    test, pool = np.flatnonzero(styles == HOLDOUT_STYLE), np.flatnonzero(styles != HOLDOUT_STYLE)
    test = test[np.isin(groups[test], groups[pool])]
    nn = pool[(f[test] @ f[pool].T).argmax(1).numpy()]
    hit = groups[nn] == groups[test]
    unseen = np.array([is_heldout(g) for g in groups[test]])
    return {"heldout_style_same_emoji": round(float(hit.mean()), 4), "n": int(len(test)),
            "heldout_style_unseen_emojis_same_emoji": round(float(hit[unseen].mean()), 4) if unseen.any() else None,
            "n_unseen": int(unseen.sum())}


class _Stop:
    """Set by SIGTERM/SIGINT: the loop checkpoints at the next step boundary and exits."""

    requested = False

    @classmethod
    def install(cls) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(cls, "requested", True))


def train(recipe: Recipe, data: Path, out: Path, *, config: Path = CONFIG, resume: bool = False,
          stop_at: int = 0, checkpoint_minutes: float = 5.0, probe_every: int = 0, threads: int = 2) -> dict:
    """Trains (or continues) to the recipe's last step, or to `stop_at` steps; gives the training log."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    corpus = load_corpus(data, recipe.styles)
    import open_clip

    torch.manual_seed(recipe.seed)  # the initial weights
    model = build_model(config, config.stem)  # registers the config, so the tokenizer below finds it
    tokens = open_clip.get_tokenizer(config.stem)(corpus.captions)
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    steps_per_epoch = len(epoch_batches(corpus, recipe, np.random.default_rng(recipe.seed + 1)))
    total = recipe.max_steps or steps_per_epoch * recipe.epochs
    warmup = max(1, round(recipe.warmup_frac * total))
    state = {"step": 0, "epoch": 0, "batches": [], "pos": 0, "log": {
        "model": MODEL_NAME, "recipe": recipe.to_json(), "total_steps": total, "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup, "images": int(len(corpus.group)), "groups": len(corpus.group_names),
        "captions": len(corpus.captions), "data_digest": corpus_digest(data, recipe.styles),
        "styles": list(recipe.styles), "heldout_style": HOLDOUT_STYLE,
        "torch": str(torch.__version__), "open_clip": str(open_clip.__version__), "threads": threads,
        "sessions": [], "steps": [], "probes": []}}
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=True)
        if saved["log"]["recipe"] != recipe.to_json():
            raise SystemExit(f"{ckpt_path} was made with another recipe; resume with the same options "
                             f"(see {out / 'recipe.json'}) or use a new --out")
        if saved["log"]["data_digest"] != state["log"]["data_digest"]:
            raise SystemExit(f"{ckpt_path} was trained on other data than {data} holds now (captions or images "
                             f"changed); rebuild the corpus as it was, or start a new --out")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["numpy_rng"]
        gen.set_state(saved["torch_rng"])
        state = {k: saved[k] for k in ("step", "epoch", "batches", "pos", "log")}
        log.info("resumed %s at step %d of %d", ckpt_path, state["step"], total)
    elif ckpt_path.exists():
        raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or choose a new --out")
    (out / "recipe.json").write_text(json.dumps(recipe.to_json(), indent=1))
    record = state["log"]
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": state["step"], "threads": threads}
    record["sessions"].append(session)
    end = min(total, stop_at) if stop_at else total
    model.train()

    def checkpoint() -> None:
        session.update(to_step=state["step"], seconds=round(time.time() - t0, 1))
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "numpy_rng": rng.bit_generator.state, "torch_rng": gen.get_state(), **state})
        write_log(out / "training_log.json", record)

    t0 = last_save = time.time()
    while state["step"] < end and not _Stop.requested:
        if state["pos"] >= len(state["batches"]):
            state["batches"], state["pos"] = epoch_batches(corpus, recipe, rng), 0
            state["epoch"] += 1
        batch = state["batches"][state["pos"]]
        state["pos"] += 1
        ts, step = time.time(), state["step"]
        lr = lr_at(step, total, warmup, recipe.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x, picks = make_inputs(corpus, batch, recipe, rng, gen)
        group = torch.from_numpy(corpus.group[batch])
        cap = torch.tensor(picks)
        img_f, txt_f, scale = model(x, tokens[cap])
        pos = (group[:, None] == group[None, :]) | (cap[:, None] == cap[None, :])
        loss = positives_loss(img_f, txt_f, scale, pos)
        if recipe.image_loss:
            loss = loss + recipe.image_loss * cross_style_image_loss(img_f, scale, group)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        state["step"] = step + 1
        record["steps"].append({"step": step + 1, "epoch": state["epoch"], "loss": round(loss.item(), 5), "lr": lr,
                                "scale": round(model.logit_scale.exp().item(), 3), "batch": len(batch),
                                "seconds": round(time.time() - ts, 3)})
        if probe_every and (state["step"] % probe_every == 0 or state["step"] == total):
            record["probes"].append({"step": state["step"], **heldout_probe(model, data)})
            log.info("probe: %s", json.dumps(record["probes"][-1]))
        if state["step"] % 10 == 0:
            el = time.time() - t0
            done = state["step"] - session["from_step"]
            log.info("step %d/%d epoch %d loss %.4f scale %.1f lr %.2e  %.2f s/step, %.1f h to go at this pace",
                     state["step"], total, state["epoch"], loss.item(), model.logit_scale.exp().item(), lr,
                     el / done, el / done * (total - state["step"]) / 3600)
        if time.time() - last_save > checkpoint_minutes * 60:
            checkpoint()
            last_save = time.time()
    checkpoint()
    if state["step"] >= total and not (out / f"{MODEL_NAME}.safetensors").exists():
        cfg = json.loads(config.read_text())
        save_fp16(model, out / f"{MODEL_NAME}.safetensors",
                  {"format": "pt", "model": MODEL_NAME, "model_cfg": json.dumps(cfg), "steps": str(total),
                   "recipe": json.dumps(recipe.to_json()), "heldout_style": HOLDOUT_STYLE,
                   "heldout_rule": "int(sha256(group).hexdigest(), 16) % 10 == 0"})
        log.info("done: %d steps; weights in %s", total, out / f"{MODEL_NAME}.safetensors")
    return record


def recipe_from_args(args) -> Recipe:
    return Recipe(epochs=args.epochs, batch_size=args.batch_size, styles_per_emoji=args.styles_per_emoji,
                  lr=args.lr, seed=args.seed, image_loss=args.image_loss, phrase_prob=args.phrase_prob,
                  max_steps=args.max_steps)


def main(argv=None) -> int:
    d = Recipe()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="tools/emoji_corpus2.py's output folder")
    p.add_argument("--out", type=Path, required=True, help="checkpoints, log and weights (outside the repo)")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt if there is one")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--styles-per-emoji", type=int, default=d.styles_per_emoji)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-loss", type=float, default=d.image_loss)
    p.add_argument("--phrase-prob", type=float, default=d.phrase_prob)
    p.add_argument("--max-steps", type=int, default=0, help="total steps instead of epochs x steps per epoch")
    p.add_argument("--stop-at", type=int, default=0, help="checkpoint and exit after this many steps")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--probe-every", type=int, default=0, help="held-out-style probe every N steps (0: off)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    lock = open(args.out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another trainer is using {args.out}; wait for it or stop it first") from None
    _Stop.install()
    train(recipe_from_args(args), args.data, args.out, config=args.config, resume=args.resume, stop_at=args.stop_at,
          checkpoint_minutes=args.checkpoint_minutes, probe_every=args.probe_every, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
