"""A post's words as vectors: its caption and the text read in its image, through the CLIP's own text tower.

The words land in the same space as the image vectors and the label prompts, so the heads can read
them like a picture. The rules, stated once:

- A caption is cleaned before anything sees it (`clean_caption`): Unicode NFC, control characters
  dropped, runs of white space made one space, at most `MAX_CAPTION_CHARS` characters kept. Emoji and
  every script are kept as they are. Empty after cleaning means no caption.
- The text read in the image (OCR lines) is joined in reading order (`ocr_text`).
- Caption and image text are encoded apart and pooled: the post's text vector is the normalised mean
  of the two unit vectors (one alone, when only one is there); no words, a row of zeros.
- Text longer than the text tower's context (77 tokens for pretrained CLIPs, 32 for the bundled
  emoji model) is truncated at it by open_clip's tokenizer: the first words count, never an error.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

MAX_CAPTION_CHARS = 2_000  # far past any text tower's context; bounds what is stored and tokenized
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
_SPACE = re.compile(r"\s+")


def clean_caption(raw: object) -> str | None:
    """Gives the caption as stored and encoded (see the module docstring), or None when there is none."""
    if raw is None:
        return None
    text = unicodedata.normalize("NFC", str(raw)[: 4 * MAX_CAPTION_CHARS])
    # Joiners inside emoji sequences (U+200D) are kept; other invisible and control characters are not.
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()[:MAX_CAPTION_CHARS].strip()
    return text or None


def ocr_text(lines: Sequence[dict] | None) -> str | None:
    """Gives the text read in an image, its lines (dicts with "text") joined in reading order, or None."""
    text = " ".join(str(line["text"]).strip() for line in lines or () if str(line["text"]).strip())
    return text or None


def text_vectors(encode, dim: int, captions: Sequence[str | None], read: Sequence[str | None]) -> np.ndarray:
    """Gives (N, D) float32 text vectors for N posts: unit-norm where a post has words, zero where not.

    `encode(texts) -> (n, D)` is the backbone's text tower (`Backbone.encode_texts`); `captions` and
    `read` (the OCR text) are per post, None for none. Each distinct text is encoded once."""
    if len(captions) != len(read):
        raise ValueError(f"{len(captions)} captions for {len(read)} OCR texts; give one of each per post")
    out = np.zeros((len(captions), dim), np.float32)
    wanted = sorted({t for t in (*captions, *read) if t})
    if not wanted:
        return out
    encoded = np.asarray(_as_numpy(encode(wanted)), np.float32)
    row = {text: encoded[n] for n, text in enumerate(wanted)}
    for n, (caption, words) in enumerate(zip(captions, read)):
        parts = [row[t] for t in (caption, words) if t]
        if parts:
            pooled = np.sum(parts, axis=0)
            norm = float(np.linalg.norm(pooled))
            out[n] = pooled / norm if norm > 0 else parts[0]
    return out


def has_words(vectors: np.ndarray) -> np.ndarray:
    """Gives (N,) bool: which rows of (N, D) text vectors hold words (a zero row holds none)."""
    return np.any(np.asarray(vectors) != 0, axis=1)


def _as_numpy(value) -> np.ndarray:
    return value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
