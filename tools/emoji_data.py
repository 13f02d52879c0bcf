"""Build EmoReact's open-licensed emoji image data (development-time tool).

What it does:
1. Fetches pinned npm packages into a cache folder outside the repository
   (``npm pack``; sha512 checked): Noto artwork (emoji-datasource-google,
   Apache-2.0), Twemoji (emoji-datasource-twitter, CC-BY-4.0), OpenMoji SVGs
   (openmoji, CC-BY-SA-4.0) and English names/tags (emojibase-data, MIT).
   A package whose license evidence is missing or not redistributable is
   refused.
2. Writes a caption corpus for CLIP training (not committed):
   ``<out-train>/<style>/<hexcode>.png`` (64x64 RGB on white) and
   ``<out-train>/captions.jsonl`` with path, style, hexcode, emoji, captions.
   Flags, keycaps, regional indicators, components and skin-tone variants
   are left out.
3. Writes the committed demo set: ``<demo>/labels.csv`` (hand-made table from
   ``tools/emoji_labels.py``), ``<demo>/images/<style>/<hexcode>.png`` for
   every labelled emoji that has artwork in all three styles, and
   ``<demo>/manifest.csv`` (path, labels, split = style, style, emoji).

Usage:
    python tools/emoji_data.py [--cache DIR] [--out-train DIR] [--demo demo]

Needs ``npm`` on PATH, Pillow and resvg-py (SVG rasteriser). It also copies
the packages' license texts to ``<demo>/LICENSES/`` (Apache-2.0.txt there is a
static copy of the standard text, not written by this tool). The first run
downloads about 150 MB and takes under a minute on 2 cores; later runs reuse the
cache and take a few seconds. Re-running is safe (idempotent).
"""

import argparse
import base64
import csv
import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_labels import EMOTIONS, LABELS  # noqa: E402

log = logging.getLogger("emoji_data")

SIZE = 64
STYLES = ("google", "twitter", "openmoji")
REDISTRIBUTABLE = {"MIT", "Apache-2.0", "CC-BY-4.0", "CC-BY-SA-4.0"}
SKIP_GROUPS = {None, 2, 9}  # regional indicators, components, flags
SKIP_SUBGROUPS = {"keycap"}

# Pinned sources. `evidence` = (file in the package, text that must be in it):
# the artwork license is read from the package itself, not assumed.
SOURCES = {
    "emoji-datasource-google": {
        "version": "16.0.0",
        "integrity": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        "package_license": "MIT",  # the data files; artwork license below
        "artwork_license": "Apache-2.0",
        "evidence": [("README.md", "Android/Google/Noto images, are available under the [Apache License 2.0]")],
        "members": ("package.json", "LICENSE", "README.md", "emoji.json", "img/google/64/"),
        "copy_license": ("LICENSE", "emoji-data-MIT.txt"),  # same file in the twitter package
    },
    "emoji-datasource-twitter": {
        "version": "16.0.0",
        "integrity": "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        "package_license": "MIT",
        "artwork_license": "CC-BY-4.0",
        "evidence": [("README.md", "Twitter images are available under the [Creative Commons Attribution 4.0 license]")],
        "members": ("package.json", "LICENSE", "README.md", "emoji.json", "img/twitter/64/"),
    },
    "openmoji": {
        "version": "17.0.0",
        "integrity": "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
        "package_license": "CC-BY-SA-4.0",
        "artwork_license": "CC-BY-SA-4.0",
        "evidence": [("LICENSE.txt", "Attribution-ShareAlike 4.0 International")],
        "members": ("package.json", "LICENSE.txt", "README.md", "data/openmoji.json", "color/svg/"),
        "copy_license": ("LICENSE.txt", "OpenMoji-CC-BY-SA-4.0.txt"),
    },
    "emojibase-data": {
        "version": "17.0.0",
        "integrity": "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
        "package_license": "MIT",
        "artwork_license": "MIT",  # no artwork: names and tags only
        "evidence": [("LICENSE", "MIT License")],
        "members": ("package.json", "LICENSE", "README.md", "en/data.json", "en/messages.json"),
        "copy_license": ("LICENSE", "emojibase-MIT.txt"),
    },
}


def norm(hexcode: str) -> str:
    """Match key across sources: upper case, no emoji variation selector."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def fetch(name: str, cache: Path, sources: dict | None = None) -> Path:
    """npm-pack one pinned package of `sources` (default SOURCES) into `cache`, verify it, extract the needed files."""
    src = (sources or SOURCES)[name]
    stem = f"{name.lstrip('@').replace('/', '-')}-{src['version']}"  # npm's tarball name for scoped packages
    out = cache / stem
    if (out / ".complete").exists():
        return out
    tgz = cache / f"{stem}.tgz"
    if not tgz.exists():
        log.info("downloading %s@%s", name, src["version"])
        npm = shutil.which("npm") or sys.exit("npm is needed to fetch the emoji packages")
        subprocess.run([npm, "pack", f"{name}@{src['version']}", "--pack-destination", str(cache),
                        "--silent"], check=True, capture_output=True)
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if digest != src["integrity"]:
        tgz.unlink()
        sys.exit(f"{tgz.name}: sha512 mismatch, removed; re-run to download again")
    log.info("extracting %s", tgz.name)
    with tarfile.open(tgz) as tar:
        wanted = [m for m in tar.getmembers() if m.isfile() and any(
            m.name.removeprefix("package/").startswith(p) for p in src["members"])]
        tar.extractall(out, members=wanted, filter="data")
    (out / ".complete").touch()
    return out


def check_license(name: str, root: Path, sources: dict | None = None) -> None:
    """Refuse a package whose license field or license text is not what we redistribute under."""
    src, pkg = (sources or SOURCES)[name], root / "package"
    declared = json.loads((pkg / "package.json").read_text())["license"]
    problems = []
    if declared != src["package_license"]:
        problems.append(f"package.json license is {declared!r}, expected {src['package_license']!r}")
    for fname, text in src["evidence"]:
        if text not in (pkg / fname).read_text(encoding="utf-8"):
            problems.append(f"{fname} no longer states {text!r}")
    if src["artwork_license"] not in REDISTRIBUTABLE:
        problems.append(f"{src['artwork_license']} does not allow redistribution")
    if problems:
        sys.exit(f"refusing {name}@{src['version']}: " + "; ".join(problems))
    log.info("%s@%s: package %s, artwork %s", name, src["version"], declared, src["artwork_license"])


def load_emojibase(root: Path) -> list[dict]:
    """Base emojis (no skin tones) with label and tags, in Unicode order."""
    pkg = root / "package" / "en"
    subgroups = {s["order"]: s["key"] for s in json.loads((pkg / "messages.json").read_text())["subgroups"]}
    data = json.loads((pkg / "data.json").read_text())
    return [e for e in data if e.get("group") not in SKIP_GROUPS
            and subgroups.get(e.get("subgroup")) not in SKIP_SUBGROUPS]


def artwork_index(roots: dict[str, Path]) -> dict[str, dict[str, Path]]:
    """style -> normalised hexcode -> artwork file (PNG or SVG)."""
    index = {}
    for style in ("google", "twitter"):
        pkg = roots[f"emoji-datasource-{style}"] / "package"
        index[style] = {norm(e["unified"]): pkg / "img" / style / "64" / e["image"]
                        for e in json.loads((pkg / "emoji.json").read_text()) if e[f"has_img_{style}"]}
    pkg = roots["openmoji"] / "package"
    index["openmoji"] = {norm(e["hexcode"]): pkg / "color" / "svg" / f"{e['hexcode']}.svg"
                         for e in json.loads((pkg / "data" / "openmoji.json").read_text())
                         if not e["skintone"] and not e["group"].startswith("extras-")}
    return {s: {k: p for k, p in idx.items() if p.exists()} for s, idx in index.items()}


def render(art: Path) -> Image.Image:
    """64x64 RGB image: transparent artwork composited on white."""
    if art.suffix == ".svg":
        import resvg_py  # only needed for OpenMoji
        art = io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_path=str(art), width=SIZE, height=SIZE,
                                                     skip_system_fonts=True)))
    im = Image.open(art).convert("RGBA")
    if im.size != (SIZE, SIZE):
        im = im.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB")


def captions(label: str, tags: list[str]) -> list[str]:
    """Short English captions from the emojibase label and its tags (minus words already in the label)."""
    extra = [t for t in tags if t != "face" and t not in label.split()]
    if ":" in label:  # "family: man, woman, girl", "kiss: woman, man"
        caps = [f"an emoji of {label}", label]
    else:
        article = "an" if label[0].lower() in "aeiou" else "a"
        caps = [f"an emoji of {article} {label}", f"{article} {label} emoji", label]
    return caps + ([", ".join(extra)] if extra else [])


def build_train(emojis: list[dict], index: dict, out: Path) -> Counter:
    """Caption corpus: one 64x64 PNG per emoji and style, plus captions.jsonl."""
    counts = Counter()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "captions.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for style in STYLES:
            (out / style).mkdir(exist_ok=True)
            for e in emojis:
                art = index[style].get(norm(e["hexcode"]))
                if art is None:
                    continue
                rel = f"{style}/{e['hexcode'].lower()}.png"
                if not (out / rel).exists():
                    render(art).save(out / rel)
                row = {"path": rel, "style": style, "hexcode": e["hexcode"].lower(), "emoji": e["emoji"],
                       "captions": captions(e["label"], e.get("tags", []))}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[style] += 1
            log.info("train %s: %d images", style, counts[style])
    tmp.replace(out / "captions.jsonl")
    return counts


def label_table(emojis: list[dict]) -> list[dict]:
    """Join the hand-made LABELS with emojibase; fail on gaps or typos."""
    by_char = {e["emoji"].replace("\ufe0f", ""): e for e in emojis}
    labelled = {k.replace("\ufe0f", "") for k in LABELS}
    missing = [e["emoji"] for e in emojis if e["group"] == 0 and e["emoji"].replace("\ufe0f", "") not in labelled]
    if missing:
        sys.exit(f"smileys-emotion emojis without a label in emoji_labels.py: {' '.join(missing)}")
    rows = []
    for char, labels in LABELS.items():
        e = by_char.get(char.replace("\ufe0f", "")) or sys.exit(f"{char!r} is not in emojibase")
        parts = labels.split("|")
        if any(p not in EMOTIONS for p in parts) or ("other" in parts and len(parts) > 1):
            sys.exit(f"bad labels for {char}: {labels}")
        rows.append({"emoji": e["emoji"], "hexcode": e["hexcode"].lower(), "name": e["label"], "labels": labels})
    return rows


def build_demo(rows: list[dict], index: dict, demo: Path) -> None:
    """labels.csv, images/<style>/<hexcode>.png and manifest.csv under `demo`."""
    demo.mkdir(parents=True, exist_ok=True)
    write_csv(demo / "labels.csv", ["emoji", "hexcode", "name", "labels"], rows)
    complete = [r for r in rows if all(norm(r["hexcode"]) in index[s] for s in STYLES)]
    for r in rows:
        if r not in complete:
            log.warning("demo: %s %s lacks artwork in %s, left out of the images", r["emoji"], r["name"],
                        [s for s in STYLES if norm(r["hexcode"]) not in index[s]])
    manifest = []
    for style in STYLES:
        folder = demo / "images" / style
        folder.mkdir(parents=True, exist_ok=True)
        keep = {f"{r['hexcode']}.png" for r in complete}
        for stale in folder.glob("*.png"):
            if stale.name not in keep:
                stale.unlink()
        for r in complete:
            render(index[style][norm(r["hexcode"])]).save(folder / f"{r['hexcode']}.png", optimize=True)
            manifest.append({"path": f"images/{style}/{r['hexcode']}.png", "labels": r["labels"],
                             "split": style, "style": style, "emoji": r["emoji"]})
    write_csv(demo / "manifest.csv", ["path", "labels", "split", "style", "emoji"], manifest)
    for name, table in (("labels.csv", rows), ("images per style", complete)):
        counts = Counter(p for r in table for p in r["labels"].split("|"))
        log.info("demo %s: %d emojis; per label %s", name, len(table),
                 ", ".join(f"{k}={counts[k]}" for k in EMOTIONS))
    size = sum(p.stat().st_size for p in demo.rglob("*") if p.is_file())
    log.info("demo: %d images, %.2f MB in %s", len(manifest), size / 1e6, demo)
    if size > 5e6:
        sys.exit(f"{demo} is {size / 1e6:.2f} MB, over the 5 MB budget")


def copy_licenses(roots: dict[str, Path], demo: Path) -> None:
    """Ship the license texts found in the packages next to the demo artwork (demo/LICENSES/)."""
    (demo / "LICENSES").mkdir(parents=True, exist_ok=True)
    for name, root in roots.items():
        if "copy_license" in SOURCES[name]:
            src, dst = SOURCES[name]["copy_license"]
            shutil.copyfile(root / "package" / src, demo / "LICENSES" / dst)


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "emoreact" / "emoji-src",
                    help="where npm tarballs are downloaded and unpacked")
    ap.add_argument("--out-train", type=Path, default=None,
                    help="caption corpus folder (default: <cache>/../emoji-train)")
    ap.add_argument("--demo", type=Path, default=Path(__file__).resolve().parent.parent / "demo",
                    help="committed demo folder (default: demo/ in the repository)")
    ap.add_argument("--skip-train", action="store_true", help="only build the demo set")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    roots = {name: fetch(name, args.cache) for name in SOURCES}
    for name, root in roots.items():
        check_license(name, root)
    emojis = load_emojibase(roots["emojibase-data"])
    index = artwork_index(roots)
    log.info("emojibase: %d base emojis; artwork: %s", len(emojis),
             ", ".join(f"{s}={len(i)}" for s, i in index.items()))
    if not args.skip_train:
        out = args.out_train or args.cache.parent / "emoji-train"
        counts = build_train(emojis, index, out)
        log.info("caption corpus: %s (%s)", out / "captions.jsonl", dict(counts))
    copy_licenses(roots, args.demo)
    build_demo(label_table(emojis), index, args.demo)


if __name__ == "__main__":
    main()
