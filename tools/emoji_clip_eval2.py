"""Evaluate an emoji CLIP on the second edition's nine-style corpus (development-time tool).

Works for either edition's weights, so ``emoreact-emoji-s`` gives the baseline of every figure:

1. **Leave-one-style-out labels.** The labelled emojis of ``tools/emoji_labels.py`` (base drawings on
   white), features from the model; labels for one style from the others' features, by nearest
   neighbour (``nn1``, the first model card's cross-style figure) and by a standardised one-vs-rest
   logistic regression (``logreg``): macro-F1 and per-label F1 over the 8 demo labels. Two protocols:
   ``demo3``: the demo's, train on two of google/twitter/openmoji and test on the third;
   ``all9``: train on the other eight styles, test on each style, emojione (never trained on by s2)
   included. The shipped demo head is another class; this one is a stand-in with the same inputs.
2. **Held-out style retrieval**: each emojione drawing's nearest neighbour among google, twitter and
   openmoji is the same emoji how often (the run's probe, on the final weights).
3. **Held-out emojis, zero-shot**: each image of a held-out group ranks the "an emoji of a <name>"
   prompts of all held-out groups; top-1/top-5 per style.

Usage:
    python tools/emoji_clip_eval2.py --data CORPUS --weights W.safetensors --config C.json [--out eval.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_augment import on_white  # noqa: E402
from emoji_clip_common import CLIP_MEAN, CLIP_STD, DEMO_LABELS, is_heldout  # noqa: E402
from emoji_corpus2 import HOLDOUT_STYLE, STYLES2  # noqa: E402
from emoji_labels import LABELS  # noqa: E402

DEMO3 = ("google", "twitter", "openmoji")


def char(hexcode: str) -> str:
    return "".join(chr(int(p, 16)) for p in hexcode.split("-") if p.lower() != "fe0f")


@torch.inference_mode()
def encode(model, images: np.ndarray) -> np.ndarray:
    """Gives (N, D) float32 unit-norm features of (N, 64, 64, 4) RGBA drawings shown on white."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    out = []
    for a in range(0, len(images), 512):
        x = np.stack([on_white(np.asarray(im)) for im in images[a:a + 512]])
        x = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        out.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1))
    return torch.cat(out).numpy()


def load_base(data: Path, style: str) -> tuple[list[dict], np.ndarray]:
    rows = [json.loads(line) for line in (data / f"{style}.jsonl").read_text().splitlines()]
    keep = [i for i, r in enumerate(rows) if r["hexcode"] == r["base"]]
    return [rows[i] for i in keep], np.load(data / f"{style}.npy", mmap_mode="r")[keep]


def head_eval(feats: dict, labels: dict, train_styles, test_style) -> dict:
    """Label macro-F1 and per-label F1 on `test_style` from features of `train_styles`, two ways: each image takes
    its nearest neighbour's labels (``nn1``, the first model card's cross-style figure), and a standardised
    one-vs-rest logistic regression (``logreg``, C = 1; at least the likeliest label per image)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([feats[s][labels[s][0]] for s in train_styles])
    y = np.concatenate([labels[s][1] for s in train_styles])
    xt, yt = feats[test_style][labels[test_style][0]], labels[test_style][1]
    nn1 = y[(xt @ x.T).argmax(1)]
    scaler = StandardScaler().fit(x)
    prob = np.stack([LogisticRegression(C=1.0, max_iter=3000).fit(scaler.transform(x), y[:, k])
                     .predict_proba(scaler.transform(xt))[:, 1] for k in range(y.shape[1])], axis=1)
    logreg = prob >= 0.5
    logreg[np.arange(len(logreg)), prob.argmax(1)] = True
    out = {"n": int(len(yt))}
    for name, pred in (("nn1", nn1), ("logreg", logreg)):
        per = f1_score(yt, pred, average=None, zero_division=0)
        out[name] = {"macro_f1": round(float(per.mean()), 4),
                     "per_label": {lab: {"f1": round(float(f), 4), "n": int(yt[:, k].sum())}
                                   for k, (lab, f) in enumerate(zip(DEMO_LABELS, per))}}
    return out


def zero_shot(model, tokenizer, data: Path, feats: dict, rows: dict) -> dict:
    table = json.loads((data / "captions.json").read_text())
    held = sorted({r["group"] for s in rows for r in rows[s] if is_heldout(r["group"]) and r["group"] in table})
    with torch.inference_mode():
        prompts = [table[g]["names"][0] for g in held]  # "an emoji of a loudly crying face"
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1).numpy()
    pos = {g: i for i, g in enumerate(held)}
    res = {}
    for s in rows:
        idx = [i for i, r in enumerate(rows[s]) if r["group"] in pos]
        if not idx:
            continue
        top5 = np.argsort(-(feats[s][idx] @ txt.T), axis=1)[:, :5]
        target = np.array([pos[rows[s][i]["group"]] for i in idx])
        res[s] = {"n": len(idx), "top1": round(float((top5[:, 0] == target).mean()), 4),
                  "top5": round(float((top5 == target[:, None]).any(1).mean()), 4)}
    return {"candidates": len(held), "per_style": res}


def evaluate(weights: Path, config: Path, data: Path) -> dict:
    import open_clip

    open_clip.add_model_config(str(config))
    model = open_clip.create_model(config.stem, pretrained=str(weights)).eval()
    tokenizer = open_clip.get_tokenizer(config.stem)
    label_of = {k.replace("\ufe0f", ""): v for k, v in LABELS.items()}
    feats, labels, rows = {}, {}, {}
    for style in STYLES2:
        rows[style], images = load_base(data, style)
        feats[style] = encode(model, images)
        idx = [i for i, r in enumerate(rows[style]) if char(r["hexcode"]) in label_of]
        y = np.array([[lab in label_of[char(rows[style][i]["hexcode"])].split("|") for lab in DEMO_LABELS]
                      for i in idx])
        labels[style] = (np.array(idx), y)
    out = {"weights": weights.name, "demo3": {}, "all9": {}}
    for s in DEMO3:
        out["demo3"][s] = head_eval(feats, labels, [t for t in DEMO3 if t != s], s)
    for s in STYLES2:
        out["all9"][s] = head_eval(feats, labels, [t for t in STYLES2 if t != s], s)
    groups = {s: np.array([r["group"] for r in rows[s]]) for s in STYLES2}
    pool = np.concatenate([feats[s] for s in DEMO3])
    pool_groups = np.concatenate([groups[s] for s in DEMO3])
    test = np.isin(groups[HOLDOUT_STYLE], pool_groups)
    nn = (feats[HOLDOUT_STYLE][test] @ pool.T).argmax(1)
    out["heldout_style_same_emoji"] = round(float((pool_groups[nn] == groups[HOLDOUT_STYLE][test]).mean()), 4)
    out["zero_shot_heldout_emojis"] = zero_shot(model, tokenizer, data, feats, rows)
    out["summary"] = {f"{protocol}_{kind}_macro_f1": {s: out[protocol][s][kind]["macro_f1"] for s in out[protocol]}
                      for protocol in ("demo3", "all9") for kind in ("nn1", "logreg")}
    out["summary"]["heldout_style_same_emoji"] = out["heldout_style_same_emoji"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = evaluate(args.weights, args.config, args.data)
    text = json.dumps(res, indent=1, ensure_ascii=False)
    if args.out:
        args.out.write_text(text)
    print(json.dumps(res["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
