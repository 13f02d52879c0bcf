"""Zero-shot evaluation of EmoReact's emoji CLIP (``emoreact-emoji-s``) on saved weights.

Loads the weights file through open_clip exactly as EmoReact does (``add_model_config`` +
``create_model_and_transforms(..., pretrained=<file>)``) and uses open_clip's own inference
transform, so the figures describe what ships.

1. Held-out emojis (the fixed ~10% of hexcodes never trained on, see ``emoji_clip_common.is_heldout``):
   every held-out image ranks the captions "an emoji of a <name>" of all held-out emojis; top-1 and
   top-5 accuracy per style and overall. Also ranked against all emojis' names (harder: trained
   names compete).
2. The same on a fixed sample of training emojis of the same size, for comparison (memorisation).
3. Demo labels (``demo/manifest.csv``): prompts "an emoji of a {happy|sad|angry|afraid|surprised|
   disgusted|neutral} face" (+ "an emoji of a face" for "other"); top-1 agreement with the first
   label, 8-way and 7-way (rows whose first label is not "other"), split by held-out/trained emoji.
   Informative only: the demo artwork is the same as the training corpus for trained emojis.

Usage:
    python tools/emoji_clip_eval.py [--weights embed/weights/emoreact-emoji-s.safetensors]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_clip_common import (CONFIG_PATH, DEMO_LABELS, DEMO_PROMPT_WORDS, REPO, STYLES,  # noqa: E402
                               cross_style_eval, demo_items, encode_images, is_heldout, load_corpus)


def load_model(weights: Path, config: Path):
    import open_clip

    open_clip.add_model_config(str(config))
    model, _, transform = open_clip.create_model_and_transforms(config.stem, pretrained=str(weights))
    model.eval()
    return model, transform, open_clip.get_tokenizer(config.stem)


@torch.inference_mode()
def encode_texts(model, tokenizer, texts: list[str], batch: int = 512) -> torch.Tensor:
    out = [torch.nn.functional.normalize(model.encode_text(tokenizer(texts[i:i + batch])), dim=-1)
           for i in range(0, len(texts), batch)]
    return torch.cat(out)


def name_prompt(row: dict) -> str:
    return f"an emoji of a {row['captions'][0].removeprefix('an emoji of a ')}"


def rank_eval(img: torch.Tensor, txt: torch.Tensor, target: np.ndarray, styles: list[str]) -> dict:
    """Top-1/top-5 accuracy of each image's own caption among `txt`, per style and overall."""
    sims = img @ txt.T
    top5 = sims.topk(min(5, txt.shape[0]), dim=1).indices.numpy()
    hit1 = top5[:, 0] == target
    hit5 = (top5 == target[:, None]).any(axis=1)
    res = {}
    for style in STYLES + ("all",):
        m = np.ones(len(styles), bool) if style == "all" else np.array([s == style for s in styles])
        if m.any():
            res[style] = {"n": int(m.sum()), "top1": round(float(hit1[m].mean()), 4),
                          "top5": round(float(hit5[m].mean()), 4)}
    return res


def emoji_eval(model, transform, tokenizer, data: Path, rows: list[dict], hexes: list[str],
               candidate_rows: dict[str, dict]) -> dict:
    """Images of `hexes` ranked against the name prompts of `candidate_rows` (hexcode -> row)."""
    cand_hex = sorted(candidate_rows)
    pos = {h: i for i, h in enumerate(cand_hex)}
    txt = encode_texts(model, tokenizer, [name_prompt(candidate_rows[h]) for h in cand_hex])
    sel = [r for r in rows if r["hexcode"] in set(hexes)]
    img = encode_images(model, transform, [data / r["path"] for r in sel])
    return rank_eval(img, txt, np.array([pos[r["hexcode"]] for r in sel]), [r["style"] for r in sel])


def demo_eval(model, transform, tokenizer, demo: Path) -> dict:
    items = demo_items(demo)
    prompts = [f"an emoji of a {DEMO_PROMPT_WORDS[lab]} face" if lab != "other" else "an emoji of a face"
               for lab in DEMO_LABELS]
    txt = encode_texts(model, tokenizer, prompts)
    img = encode_images(model, transform, [demo / it["path"] for it in items])
    sims = img @ txt.T
    first = np.array([DEMO_LABELS.index(it["labels"].split("|")[0]) for it in items])
    pred8 = sims.argmax(1).numpy()
    pred7 = sims[:, :7].argmax(1).numpy()
    held = np.array([is_heldout(Path(it["path"]).stem) for it in items])
    emo = first != DEMO_LABELS.index("other")

    def acc(pred, mask):
        return {"n": int(mask.sum()), "top1": round(float((pred[mask] == first[mask]).mean()), 4) if mask.any() else None}

    res = {"prompts": prompts,
           "8way_all": acc(pred8, np.ones(len(items), bool)),
           "7way_emotion_rows": acc(pred7, emo),
           "7way_emotion_rows_heldout_emojis": acc(pred7, emo & held),
           "7way_emotion_rows_trained_emojis": acc(pred7, emo & ~held),
           "chance_7way_majority": round(float(np.bincount(first[emo]).max() / max(1, emo.sum())), 4)}
    res["7way_per_style"] = {s: acc(pred7, emo & np.array([it["style"] == s for it in items])) for s in STYLES}
    res["cross_style"] = cross_style_eval(img, items)
    return res


def evaluate(weights: Path, config: Path, data: Path, demo: Path, seed: int = 0, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    t0 = time.time()
    model, transform, tokenizer = load_model(weights, config)
    load_s = time.time() - t0
    rows = load_corpus(data)
    by_hex = {}
    for r in rows:
        by_hex.setdefault(r["hexcode"], r)
    held = sorted(h for h in by_hex if is_heldout(h))
    trained = sorted(h for h in by_hex if not is_heldout(h))
    sample = sorted(np.random.default_rng(seed).choice(trained, size=len(held), replace=False).tolist())
    res = {
        "weights": weights.name, "load_seconds": round(load_s, 2),
        "heldout_vs_heldout": emoji_eval(model, transform, tokenizer, data, rows, held,
                                         {h: by_hex[h] for h in held}),
        "heldout_vs_all_emojis": emoji_eval(model, transform, tokenizer, data, rows, held, by_hex),
        "trained_sample_vs_sample": emoji_eval(model, transform, tokenizer, data, rows, sample,
                                               {h: by_hex[h] for h in sample}),
        "n_candidates": {"heldout": len(held), "all": len(by_hex), "trained_sample": len(sample)},
    }
    if (demo / "manifest.csv").is_file():
        res["demo"] = demo_eval(model, transform, tokenizer, demo)
    h, a, t = res["heldout_vs_heldout"]["all"], res["heldout_vs_all_emojis"]["all"], res["trained_sample_vs_sample"]["all"]
    res["summary"] = {"heldout_top1": h["top1"], "heldout_top5": h["top5"], "heldout_vs_all_top1": a["top1"],
                      "heldout_vs_all_top5": a["top5"], "trained_top1": t["top1"], "trained_top5": t["top5"],
                      "demo_7way": res.get("demo", {}).get("7way_emotion_rows", {}).get("top1"),
                      "demo_cross_style_same_emoji": res.get("demo", {}).get("cross_style", {}).get("mean_same_emoji"),
                      "demo_cross_style_label_f1": res.get("demo", {}).get("cross_style", {}).get("mean_label_macro_f1")}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=REPO / "embed" / "weights" / "emoreact-emoji-s.safetensors")
    p.add_argument("--config", type=Path, default=CONFIG_PATH)
    p.add_argument("--data", type=Path, default=Path("~/.cache/emoreact/emoji-train").expanduser())
    p.add_argument("--demo", type=Path, default=REPO / "demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(evaluate(args.weights, args.config, args.data, args.demo, args.seed, args.threads), indent=1,
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
