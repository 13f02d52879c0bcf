"""Build the image corpus of the second-edition emoji CLIP (``emoreact-emoji-s2``; development-time tool).

Nine emoji styles from pinned npm packages, each checked for its licence like ``tools/emoji_data.py``
does (package.json's licence field and the licence stated inside the package; sha512 of the tarball):

| style       | package                                   | licence      | how it is drawn             |
| google      | emoji-datasource-google 16.0.0 (Noto)     | Apache-2.0   | 64 px PNG                   |
| twitter     | emoji-datasource-twitter 16.0.0 (Twemoji) | CC-BY-4.0    | 64 px PNG                   |
| openmoji    | openmoji 17.0.0                           | CC-BY-SA-4.0 | SVG, rendered with resvg    |
| fluent      | @iconify-json/fluent-emoji 1.2.7          | MIT          | SVG (Iconify JSON), resvg   |
| fluent-flat | @iconify-json/fluent-emoji-flat 1.2.6     | MIT          | SVG (Iconify JSON), resvg   |
| fluent-hc   | @iconify-json/fluent-emoji-high-contrast 1.2.6 | MIT    | SVG, black on transparent   |
| fluent-3d   | @lobehub/fluent-emoji-3d 1.1.0            | MIT          | WebP 3D renders, downscaled |
| noto-v1     | @iconify-json/noto-v1 1.2.5 (blob era)    | Apache-2.0   | SVG (Iconify JSON), resvg   |
| emojione    | @iconify-json/emojione 1.2.3 (2.3.0)      | CC-BY-4.0    | SVG; HELD OUT of training   |

``emojione`` is a vendor whose art shares no designer with any training style, so it is held out of
the CLIP's training entirely (``HOLDOUT_STYLE``): figures on it measure art never seen.

Every emoji of emojibase (flags, keycaps, components left out) and every skin-tone variant is drawn
in each style that has it. Skin-tone and gender variants share a *group* (``group_key``) with their
base emoji: one emoji for the held-out rule, the batching and the contrastive positives.

Writes, under ``--out`` (outside the repository; the artwork never enters it):
  ``<style>.npy``    (N, 64, 64, 4) uint8 RGBA, the artwork at 64 px on transparent
  ``<style>.jsonl``  one row per image: hexcode, group, base (the emojibase entry giving the captions)
  ``captions.json``  base hexcode -> training captions (``tools/emoji_captions2.py``)
  ``sources.json``   per style: package, version, licence, count, renderer
A style whose files exist is not drawn again; delete them to redraw.

Usage:  python tools/emoji_corpus2.py --cache /path/src --out /path/data
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_data import SOURCES, check_license, fetch, load_emojibase, norm  # noqa: E402

log = logging.getLogger("emoji_corpus2")
SIZE = 64
HOLDOUT_STYLE = "emojione"
_ICONIFY = ("package.json", "README.md", "info.json", "icons.json", "chars.json")


def _iconify(version: str, integrity: str, spdx: str) -> dict:
    return {"version": version, "integrity": integrity, "package_license": spdx, "artwork_license": spdx,
            "evidence": [("info.json", f'"spdx": "{spdx}"')], "members": _ICONIFY}


SOURCES2 = {
    **{k: SOURCES[k] for k in ("emoji-datasource-google", "emoji-datasource-twitter", "openmoji", "emojibase-data")},
    "@iconify-json/fluent-emoji": _iconify(
        "1.2.7", "sha512-D8G6bKAyIsyxP1rzZtIWr/gg/fO4Rg1+DyCWlfqKK4h8W+4Em/Y0P6QYgJUQTlUcagzJvSyg+9OBv4hz4Hc/QA==",
        "MIT"),
    "@iconify-json/fluent-emoji-flat": _iconify(
        "1.2.6", "sha512-RY47RgPb47fYUiyrA64sIOL0+UU02s29sXpNBbIQRBUlPlfNFTKUmZDERGuxDs/7yNGWqQYvuaSYM1M4fRXlUw==",
        "MIT"),
    "@iconify-json/fluent-emoji-high-contrast": _iconify(
        "1.2.6", "sha512-esqhZPpkrF7sNX3NsLoh8KW64okEr/bzko7WNnFP+qTJGAqDPDYjp0925yxuivXy3HtVQB8xhIKu3+Nq1byX5w==",
        "MIT"),
    "@iconify-json/noto-v1": _iconify(
        "1.2.5", "sha512-/DsVMius69Q0fRS53z7QK1TROSuar606jiIx+laXtdsYGMXpf6LtHBx6CGfoo3UHHb/XpBsw+1L1x3eyPqMuVA==",
        "Apache-2.0"),
    "@iconify-json/emojione": _iconify(
        "1.2.3", "sha512-T9+T3HIbJNLKKsmxYKlaYhvnHYkz/HNYTV7SHCXVZPfeUi4FqskY70YeN8yYAZT8cCv7w5vJxS4Q1m8zb9CMMg==",
        "CC-BY-4.0"),
    "@lobehub/fluent-emoji-3d": {
        "version": "1.1.0",
        "integrity": "sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1DLRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g==",
        "package_license": "MIT", "artwork_license": "MIT",  # Microsoft's Fluent Emoji (MIT), repackaged
        "evidence": [("README.md", "This project is [MIT](./LICENSE) licensed.")],
        "members": ("package.json", "README.md", "assets/"),
    },
}

# style -> (package, how its hexcodes are found, renderer note)
STYLES2 = {
    "google": ("emoji-datasource-google", "datasource", "64 px PNG as shipped"),
    "twitter": ("emoji-datasource-twitter", "datasource", "64 px PNG as shipped"),
    "openmoji": ("openmoji", "openmoji", "SVG rendered at 64 px with resvg-py"),
    "fluent": ("@iconify-json/fluent-emoji", "fluent", "Iconify SVG rendered at 64 px with resvg-py"),
    "fluent-flat": ("@iconify-json/fluent-emoji-flat", "fluent", "Iconify SVG rendered at 64 px with resvg-py"),
    "fluent-hc": ("@iconify-json/fluent-emoji-high-contrast", "fluent", "Iconify SVG, currentColor black, resvg-py"),
    "fluent-3d": ("@lobehub/fluent-emoji-3d", "webp", "WebP downscaled to 64 px (Lanczos, premultiplied alpha)"),
    "noto-v1": ("@iconify-json/noto-v1", "slug", "Iconify SVG rendered at 64 px with resvg-py"),
    "emojione": ("@iconify-json/emojione", "slug", "Iconify SVG rendered at 64 px with resvg-py"),
}
TRAIN_STYLES = tuple(s for s in STYLES2 if s != HOLDOUT_STYLE)

SKIN = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
ADULTS = {"1F468", "1F469"}  # man, woman -> person (1F9D1)


def group_key(hexcode: str, known: dict[str, str], fallback: str | None = None) -> str:
    """Gives the lower-case emojibase hexcode of the emoji that `hexcode` is a variant of.

    Skin tones are dropped, a trailing ZWJ + female/male sign is dropped, and a leading man/woman is
    read as person; the result counts when emojibase has it (`known`: normalised -> emojibase hexcode),
    else the skin-free form, else `fallback` (the base emoji of a skin-tone variant), else `hexcode`
    ("man detective" and "detective: dark skin tone" join "detective"; families keep their own).
    """
    skin_free = [p for p in norm(hexcode).split("-") if p not in SKIN]
    parts = skin_free
    if len(parts) >= 3 and parts[-2] == "200D" and parts[-1] in ("2640", "2642"):
        parts = parts[:-2]
    if parts and parts[0] in ADULTS and (len(parts) == 1 or parts[1] == "200D"):
        parts = ["1F9D1"] + parts[1:]
    for key in ("-".join(parts), "-".join(skin_free)):
        if key in known:
            return known[key].lower()
    return (fallback or hexcode).lower()


def slug(label: str) -> str:
    """Iconify's icon name for an emoji label: 'face with tears of joy' -> 'face-with-tears-of-joy'."""
    s = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode().lower().replace("'", "")
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


def iconify_svgs(pkg: Path) -> dict[str, str]:
    """Icon name -> standalone SVG document for an Iconify JSON package (aliases without transforms too)."""
    data = json.loads((pkg / "icons.json").read_text())
    width, height = data.get("width", 16), data.get("height", 16)

    def doc(icon: dict) -> str:
        w, h = icon.get("width", width), icon.get("height", height)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                f'viewBox="{icon.get("left", 0)} {icon.get("top", 0)} {w} {h}" width="{w}" height="{h}" '
                f'color="#000000">{icon["body"]}</svg>')

    out = {name: doc(icon) for name, icon in data["icons"].items()}
    for name, alias in data.get("aliases", {}).items():
        if set(alias) == {"parent"} and alias["parent"] in out:
            out[name] = out[alias["parent"]]
    return out


def style_index(style: str, roots: dict[str, Path], variants: list[dict]) -> dict[str, object]:
    """Normalised hexcode -> artwork (a file Path or an SVG string) for one style."""
    package, kind, _ = STYLES2[style]
    pkg = roots[package] / "package"
    if kind == "datasource":
        out = {}
        for e in json.loads((pkg / "emoji.json").read_text()):
            for v in [e, *e.get("skin_variations", {}).values()]:
                if v.get(f"has_img_{style}"):
                    out[norm(v["unified"])] = pkg / "img" / style / "64" / v["image"]
        return {k: p for k, p in out.items() if p.exists()}
    if kind == "openmoji":
        return {norm(e["hexcode"]): pkg / "color" / "svg" / f"{e['hexcode']}.svg"
                for e in json.loads((pkg / "data" / "openmoji.json").read_text())
                if not e["group"].startswith("extras-") and (pkg / "color" / "svg" / f"{e['hexcode']}.svg").exists()}
    if kind == "webp":
        return {norm(p.stem): p for p in (pkg / "assets").glob("*.webp")}
    svgs = iconify_svgs(pkg)
    if kind == "fluent":  # the flat set's chars.json names the icons of all three Fluent sets
        flat = roots["@iconify-json/fluent-emoji-flat"] / "package" / "chars.json"
        names = {norm(h): n for h, n in json.loads(flat.read_text()).items()}
    else:
        names = {norm(v["hexcode"]): slug(v["label"]) for v in variants}
    return {h: svgs[n] for h, n in names.items() if n in svgs}


def render(art) -> np.ndarray:
    """Gives (64, 64, 4) uint8 RGBA: the artwork on transparent, scaled to fit 64 px."""
    if isinstance(art, str) or art.suffix == ".svg":
        import resvg_py  # the SVG renderer: pip install "emoreact[train-emoji]"

        kwargs = {"svg_string": art} if isinstance(art, str) else {"svg_path": str(art)}
        art = io.BytesIO(bytes(resvg_py.svg_to_bytes(width=SIZE, height=SIZE, skip_system_fonts=True, **kwargs)))
    with Image.open(art) as im:
        im = im.convert("RGBA")
        if im.size != (SIZE, SIZE):  # resize premultiplied, so transparent pixels' colour does not bleed
            im = im.convert("RGBa").resize((SIZE, SIZE), Image.Resampling.LANCZOS).convert("RGBA")
        return np.asarray(im, dtype=np.uint8).copy()


def emoji_variants(emojis: list[dict]) -> list[dict]:
    """Every base emoji and skin-tone variant: hexcode, label, group, base (whose captions it takes)."""
    known = {norm(e["hexcode"]): e["hexcode"] for e in emojis}
    out = []
    for e in emojis:
        for v in [e, *e.get("skins", [])]:
            out.append({"hexcode": v["hexcode"].lower(), "label": v["label"], "base": e["hexcode"].lower(),
                        "group": group_key(v["hexcode"], known, fallback=group_key(e["hexcode"], known))})
    return out


def build_style(style: str, roots: dict, variants: list[dict], out: Path) -> int:
    """Draws one style into <out>/<style>.npy and .jsonl (atomically); gives the image count."""
    npy, rows_path = out / f"{style}.npy", out / f"{style}.jsonl"
    if npy.exists() and rows_path.exists():
        return len(rows_path.read_text().splitlines())
    index = style_index(style, roots, variants)
    rows = [{"hexcode": v["hexcode"], "group": v["group"], "base": v["base"]}
            for v in variants if norm(v["hexcode"]) in index]
    images = np.empty((len(rows), SIZE, SIZE, 4), np.uint8)
    by_hex = {v["hexcode"]: v for v in variants}
    for i, r in enumerate(rows):
        images[i] = render(index[norm(by_hex[r["hexcode"]]["hexcode"])])
    tmp = out / f"{style}.tmp.npy"
    np.save(tmp, images)
    tmp.replace(npy)
    rows_path.with_suffix(".jsonl.tmp").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows_path.with_suffix(".jsonl.tmp").replace(rows_path)
    log.info("%s: %d images of %d groups", style, len(rows), len({r["group"] for r in rows}))
    return len(rows)


def main(argv=None) -> None:
    from emoji_captions2 import caption_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="npm tarballs and unpacked packages")
    ap.add_argument("--out", type=Path, required=True, help="corpus folder (outside the repository)")
    ap.add_argument("--styles", nargs="*", default=list(STYLES2), choices=list(STYLES2))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    roots = {name: fetch(name, args.cache, SOURCES2) for name in SOURCES2}
    for name, root in roots.items():
        check_license(name, root, SOURCES2)
    emojis = load_emojibase(roots["emojibase-data"])
    variants = emoji_variants(emojis)
    counts = {s: build_style(s, roots, variants, args.out) for s in args.styles}
    table = caption_table(emojis)
    (args.out / "captions.json").write_text(json.dumps(table, ensure_ascii=False, indent=0))
    sources = {s: {"package": STYLES2[s][0], "version": SOURCES2[STYLES2[s][0]]["version"],
                   "licence": SOURCES2[STYLES2[s][0]]["artwork_license"], "images": n, "rendered": STYLES2[s][2],
                   "held_out_of_training": s == HOLDOUT_STYLE} for s, n in counts.items()}
    (args.out / "sources.json").write_text(json.dumps(sources, indent=1))
    log.info("corpus in %s: %s; captions for %d emojis", args.out, counts, len(table))


if __name__ == "__main__":
    main()
