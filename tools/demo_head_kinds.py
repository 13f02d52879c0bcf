"""Linear head against the demo's MLP head, on the same leave-one-style-out evaluation.

Why the demo's head is an MLP: with the bundled emoji CLIP, each emoji's drawings sit together but
an emotion is spread over many emojis, and a linear layer cannot carve that out. This prints the
macro-F1 of both head kinds (each with the zero-shot prior) per held-out style, and the few-label
figures with and without the prior, from `demo.style_evaluation` on a demo store.

Usage (after `python cli.py demo --no-serve`, which writes runs/demo/store):
    python tools/demo_head_kinds.py [--store runs/demo/store]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emoreact.offline_demo import DEMO_HEAD, DEMO_LABELS, DEMO_MODEL, STYLES, style_evaluation
from emoreact.embed import load_backbone
from emoreact.heads import HeadConfig
from emoreact.labels import load_label_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("runs/demo/store"))
    args = p.parse_args(argv)
    labels = load_label_config(DEMO_LABELS)
    backbone = load_backbone(DEMO_MODEL, "cpu")
    out = {}
    for kind, config in (("linear", HeadConfig(zero_shot_prior=True)), ("mlp (the demo's)", DEMO_HEAD)):
        results = style_evaluation(args.store, labels, backbone, head_config=config)
        out[kind] = {style: {"macro_f1": round(results[style]["head_with_prior"]["macro_f1"], 3),
                             "few_label_with_prior": round(results[style]["few_label"]["macro_f1_with_prior"], 3),
                             "few_label_without_prior": round(results[style]["few_label"]["macro_f1_without_prior"], 3)}
                     for style in STYLES}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
