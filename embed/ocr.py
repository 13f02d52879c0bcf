"""Placeholder until the OCR engine lands (branch ocr): no words are read."""
from __future__ import annotations

from .identity import ModelLoadError


def ocr_reader(mode: str):
    """Gives None for off and auto; on is refused (no OCR engine in this build)."""
    if mode == "on":
        raise ModelLoadError('--ocr on needs the OCR extra: pip install "emoreact[ocr]"')
    return None
