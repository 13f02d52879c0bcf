"""Captions of the second-edition emoji CLIP's text tower (``emoreact-emoji-s2``; development-time tool).

Each emoji (base hexcode; its skin-tone and gender variants share it) gets two kinds of caption:

- ``names``: the first edition's captions from emojibase's name and tags (CLDR keyword annotations),
  e.g. "an emoji of a loudly crying face", "bawling, cry, sad, sob, tear";
- ``phrases``: short things people write, made from the feeling words among the emoji's own name and
  tags (and their synonyms in ``SYNONYMS``, a word-level thesaurus): "i'm so scared", "feeling sad",
  "this is gross", "pure rage"; plus the phrases of ``demo/phrases/train.toml`` that contain one of
  those words, or whose label's word (``LABEL_WORDS``: fear -> scared) is one of them ("best day ever",
  a happy phrase, goes to the emojis tagged happy). No emoji's hand emotion label is used: the link
  from phrase to emoji is the emoji's own name and tags.

The bench's TEST phrases (``demo/phrases/test.toml``) measure generalisation, so a caption equal to
one of them (case and punctuation aside) is dropped: "so sad" is never trained on, "i'm so sad" is.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_data import captions as name_captions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PHRASES = REPO / "demo" / "phrases"
WORD = re.compile(r"[a-z0-9']+")

# feelings a person says of themselves; qualities said of a thing; nouns of feeling
FEELINGS = ("happy", "sad", "angry", "mad", "furious", "scared", "afraid", "fearful", "worried", "nervous",
            "anxious", "surprised", "shocked", "amazed", "upset", "tired", "sleepy", "bored", "excited",
            "confused", "embarrassed", "proud", "relieved", "lonely", "hurt", "sick", "annoyed",
            "disappointed", "crying", "laughing", "cheerful", "grumpy", "exhausted", "frustrated", "cold",
            "hot", "calm", "silly", "shy", "sorry", "unhappy", "glad", "joyful", "frightened", "terrified",
            "disgusted", "heartbroken", "miserable", "depressed", "delighted", "astonished", "stunned",
            "pleased", "grateful", "nauseated", "dizzy", "speechless")
QUALITIES = ("gross", "funny", "awful", "scary", "hilarious", "disgusting", "amazing", "cute", "weird",
             "creepy", "annoying", "terrible", "horrible", "nasty", "great", "cool", "sad", "frightening",
             "revolting", "shocking", "boring", "spooky", "evil", "perfect", "beautiful")
NOUNS = ("joy", "rage", "fear", "love", "anger", "sadness", "horror", "panic", "shock", "tears", "disgust",
         "happiness", "surprise", "terror", "grief", "fun", "laughter")
SYNONYMS = {  # a tag word -> other words for the same feeling (a thesaurus, not a label table)
    "scared": ("frightened", "terrified", "afraid"), "fear": ("terror", "panic"), "scream": ("terrified",),
    "angry": ("furious", "mad", "annoyed"), "rage": ("anger", "furious"), "mad": ("angry",),
    "sad": ("unhappy", "miserable", "heartbroken"), "cry": ("crying", "tears", "sadness"),
    "happy": ("glad", "joyful", "delighted"), "joy": ("happiness", "happy"), "laugh": ("laughing", "hilarious"),
    "gross": ("disgusting", "nasty", "revolting"), "vomit": ("disgusted", "gross", "nauseated"),
    "nauseated": ("disgusted", "gross", "sick"), "surprised": ("shocked", "astonished", "amazed"),
    "shock": ("shocked", "stunned"), "wow": ("amazed", "surprised"), "tired": ("exhausted", "sleepy"),
    "love": ("lovely",), "funny": ("hilarious",), "upset": ("unhappy",), "worried": ("anxious", "nervous"),
}
# the word of each label of demo/phrases/train.toml that an emoji's tags must hold to take its phrases
LABEL_WORDS = {"happy": "happy", "sad": "sad", "angry": "angry", "fear": "scared", "surprise": "surprised",
               "disgust": "gross", "neutral": "neutral"}
FEELING_TEMPLATES = ("i'm {w}", "i'm so {w}", "so {w}", "feeling {w}", "i feel {w}", "{w} right now", "very {w}")
QUALITY_TEMPLATES = ("this is {w}", "that's so {w}", "so {w}", "how {w}", "{w}")
NOUN_TEMPLATES = ("pure {w}", "so much {w}", "{w}")


def normalise(text: str) -> str:
    """Lower case, words only: the key under which a caption is compared with a test phrase."""
    return " ".join(WORD.findall(text.lower().replace("’", "'")))


def load_phrases(which: str) -> dict[str, list[str]]:
    """Gives label -> phrases of demo/phrases/<which>.toml."""
    return tomllib.loads((PHRASES / f"{which}.toml").read_text(encoding="utf-8"))


def tag_words(label: str, tags: list[str]) -> set[str]:
    """Gives the words of an emoji's name and tags, widened by SYNONYMS."""
    words = set(WORD.findall(" ".join([label, *tags]).lower()))
    for w in list(words):
        words.update(SYNONYMS.get(w, ()))
    return words


def feeling_words(label: str, tags: list[str]) -> set[str]:
    """Gives the feeling words of an emoji: its name's and tags' words (and synonyms) that name a feeling."""
    return tag_words(label, tags) & set(FEELINGS + QUALITIES + NOUNS)


def phrase_captions(label: str, tags: list[str], train_phrases: dict[str, list[str]], banned: set[str]) -> list[str]:
    """Gives the emoji's templated phrases and matching train.toml phrases (`train_phrases`: label -> phrases),
    none equal to a `banned` key."""
    words, everything = feeling_words(label, tags), tag_words(label, tags)
    out = []
    for w in sorted(words):
        for kind, templates in ((FEELINGS, FEELING_TEMPLATES), (QUALITIES, QUALITY_TEMPLATES), (NOUNS, NOUN_TEMPLATES)):
            if w in kind:
                out.extend(t.format(w=w) for t in templates)
    for emotion, phrases in train_phrases.items():
        take_all = LABEL_WORDS.get(emotion) in everything
        out.extend(p for p in phrases if take_all or words & set(WORD.findall(p.lower())))
    seen, kept = set(), []
    for c in out:
        key = normalise(c)
        if key not in banned and key not in seen:
            seen.add(key)
            kept.append(c)
    return kept


def caption_table(emojis: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Gives base hexcode (lower case) -> {"names": [...], "phrases": [...]} for every emojibase emoji."""
    banned = {normalise(p) for phrases in load_phrases("test").values() for p in phrases}
    train = {k: [p for p in phrases if normalise(p) not in banned] for k, phrases in load_phrases("train").items()}
    return {e["hexcode"].lower(): {"names": name_captions(e["label"], e.get("tags", [])),
                                   "phrases": phrase_captions(e["label"], e.get("tags", []), train, banned)}
            for e in emojis}


def table_words(table: dict[str, dict[str, list[str]]], keep) -> list[str]:
    """Gives the sorted words of the captions of the emojis for which keep(hexcode) is true."""
    return sorted({w for h, caps in table.items() if keep(h)
                   for c in caps["names"] + caps["phrases"] for w in WORD.findall(c.lower())})
