"""Write the words the bundled emoji CLIP's text tower trained on (development-time tool).

The text tower of `emoreact-emoji-s` saw only the captions of `tools/emoji_data.py`'s corpus: each
emoji's emojibase name and tags in a few templates ("an emoji of a {name}", "{name}", its tags),
for the emojis that `tools/train_emoji_clip.py` did not hold out. This tool rebuilds those
captions from the same pinned emojibase package and writes their words, one a line, lower case,
sorted, to `demo/phrases/text_tower_words.txt` (committed: `bench posts` reports which words of its
phrases the tower knows, offline). A word is a run of letters, digits or apostrophes.

``--edition s2`` writes the words of the second edition's (``emoreact-emoji-s2``) captions instead:
names, tags and phrases (``tools/emoji_captions2.py``) of the emoji groups it trains on, read from the
corpus folder of ``tools/emoji_corpus2.py``, to ``embed/weights/text_tower_words_s2.txt``. When the
bundled model becomes s2, that list replaces ``demo/phrases/text_tower_words.txt``.

Usage (npm on PATH, as for tools/emoji_data.py):
    python tools/text_tower_words.py [--cache DIR] [--out demo/phrases/text_tower_words.txt]
    python tools/text_tower_words.py --edition s2 --data CORPUS [--out embed/weights/text_tower_words_s2.txt]
"""
import argparse
import json
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_clip_common import is_heldout  # noqa: E402
from emoji_data import captions, check_license, fetch, load_emojibase  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORD = re.compile(r"[a-z0-9']+")


def tower_words(emojis: list[dict]) -> list[str]:
    """Gives the sorted words of the training captions of every emoji not held out."""
    words = set()
    for e in emojis:
        if is_heldout(e["hexcode"].lower()):
            continue
        for caption in captions(e["label"], e.get("tags", [])):
            words.update(WORD.findall(caption.lower()))
    return sorted(words)


def s2_words(data: Path) -> list[str]:
    """Gives the sorted words of the second edition's captions of the emoji groups it trains on."""
    from emoji_captions2 import table_words
    from emoji_corpus2 import TRAIN_STYLES

    group = {}
    for style in TRAIN_STYLES:
        for line in (data / f"{style}.jsonl").read_text().splitlines():
            row = json.loads(line)
            group[row["base"]] = row["group"]
    table = json.loads((data / "captions.json").read_text())
    return table_words(table, lambda h: h in group and not is_heldout(group[h]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "emoreact" / "emoji-src",
                        help="npm package cache, the one tools/emoji_data.py uses")
    parser.add_argument("--edition", choices=("s", "s2"), default="s")
    parser.add_argument("--data", type=Path, help="with --edition s2: tools/emoji_corpus2.py's output folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.edition == "s2":
        if args.data is None:
            parser.error("--edition s2 needs --data, the folder tools/emoji_corpus2.py wrote")
        out = args.out or REPO / "embed" / "weights" / "text_tower_words_s2.txt"
        words = s2_words(args.data)
        out.write_text("# Words of the captions the second-edition emoji CLIP's (emoreact-emoji-s2) text tower trains\n"
                       "# on:"
                       " emojibase-data 17.0.0 names and tags (MIT, Miles Johnson) and the phrases of\n"
                       "# tools/emoji_captions2.py (templates, demo/phrases/train.toml; never test.toml) of the emoji\n"
                       "# groups tools/train_emoji_clip2.py does not hold out. Written by tools/text_tower_words.py\n"
                       "# --edition s2; one lower-case word a line.\n" + "\n".join(words) + "\n", encoding="utf-8")
        logging.info("%d words -> %s", len(words), out)
        return
    args.out = args.out or REPO / "demo" / "phrases" / "text_tower_words.txt"
    root = fetch("emojibase-data", args.cache)
    check_license("emojibase-data", root)
    emojis = load_emojibase(root)
    words = tower_words(emojis)
    header = ("# Words of the captions the bundled emoji CLIP's text tower trained on: emojibase-data 17.0.0\n"
              "# names and tags (MIT, Miles Johnson) of the emojis tools/train_emoji_clip.py did not hold out.\n"
              "# Written by tools/text_tower_words.py; one lower-case word a line.\n")
    args.out.write_text(header + "\n".join(words) + "\n", encoding="utf-8")
    logging.info("%d emojis, %d words -> %s", len(emojis), len(words), args.out)


if __name__ == "__main__":
    main()
