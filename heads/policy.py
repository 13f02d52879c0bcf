"""The emoji policy: which reactions fit an image's predicted emotions and which are blocked."""
from __future__ import annotations

from emoreact.labels import LabelConfig


def emoji_policy(predicted: list[str], config: LabelConfig) -> tuple[list[str], list[str]]:
    """Gives (allowed, blocked) emojis for a set of predicted labels.

    Allowed is the union of the labels' allowed emojis, in label order, minus anything that any
    predicted label blocks: a sad-and-happy image never gets 😂, because sad blocks it.
    Blocked is the union of the blocked lists.
    """
    blocked: list[str] = []
    allowed: list[str] = []
    for name in predicted:
        spec = config.label(name)
        blocked += [e for e in spec.blocked if e not in blocked]
        allowed += [e for e in spec.allowed if e not in allowed]
    return [e for e in allowed if e not in blocked], blocked
