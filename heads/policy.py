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


def rank_reactions(allowed: list[str], predicted: list[str], scores: dict[str, float],
                   config: LabelConfig) -> dict[str, float]:
    """Gives {emoji: fit score} for the allowed emojis, best first (ties keep `allowed`'s order).

    score(e) = weight(e) x max over predicted labels l that allow e of the calibrated score of l,
    `weight` from the config's [reaction_weights] (1.0 when unlisted); `scores` maps label -> score.
    """
    fit = {}
    for e in allowed:
        best = max((scores[name] for name in predicted if e in config.label(name).allowed), default=0.0)
        fit[e] = config.weight(e) * best
    return dict(sorted(fit.items(), key=lambda item: -item[1]))  # sorted() is stable: ties keep policy order
