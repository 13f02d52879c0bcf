"""The emoji policy: which reactions fit an image's predicted emotions and which are blocked."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    values = reaction_fit(allowed, predicted, np.array([[scores[name] for name in predicted]], np.float64), config)[0]
    fit = {e: float(v) for e, v in zip(allowed, values)}
    return dict(sorted(fit.items(), key=lambda item: -item[1]))  # sorted() is stable: ties keep policy order


def reaction_fit(allowed: list[str], predicted: list[str], scores: np.ndarray, config: LabelConfig) -> np.ndarray:
    """Gives (N, E) float64 fit scores of the `allowed` emojis for N images that share the `predicted`
    labels: weight(e) x max over predicted labels l that allow e of the image's score of l (0 when none).

    scores: (N, len(predicted)) calibrated scores (>= 0) of the predicted labels, in `predicted`'s order.
    The one implementation of the ranking formula: `rank_reactions` and `reactions` both use it.
    """
    allows = np.array([[e in config.label(name).allowed for name in predicted] for e in allowed], bool)
    weights = np.array([config.weight(e) for e in allowed], np.float64)
    scores = np.asarray(scores, np.float64).reshape(len(scores), len(predicted))
    masked = np.where(allows[None, :, :], scores[:, None, :], 0.0)  # (N, E, predicted)
    return weights * masked.max(axis=2, initial=0.0)


@dataclass
class Reactions:
    """The policy's answer for N images as ragged rows (row i is values[offsets[i]:offsets[i + 1]])."""

    predicted: np.ndarray  # label indices, highest score first (ties in label order)
    predicted_offsets: np.ndarray  # (N + 1,) int64
    allowed: np.ndarray  # indices into `emojis`, best fit first (ties in policy order)
    fit: np.ndarray  # float64, each allowed emoji's fit score
    allowed_offsets: np.ndarray
    blocked: np.ndarray  # indices into `emojis`, in policy order
    blocked_offsets: np.ndarray
    emojis: list[str]  # every emoji of the config, the vocabulary of `allowed` and `blocked`

    def row(self, i: int, labels: list[str]) -> tuple[list[str], list[str], list[float], list[str]]:
        """Gives image i's (predicted labels, allowed emojis, their fit scores, blocked emojis)."""
        p, a, b = (slice(o[i], o[i + 1]) for o in (self.predicted_offsets, self.allowed_offsets, self.blocked_offsets))
        return ([labels[j] for j in self.predicted[p]], [self.emojis[j] for j in self.allowed[a]],
                self.fit[a].tolist(), [self.emojis[j] for j in self.blocked[b]])


def reactions(probs: np.ndarray, chosen: np.ndarray, config: LabelConfig) -> Reactions:
    """Gives the predicted labels and the allowed (ranked) and blocked emojis of N images at once, as the
    predictor gives them one image at a time: `emoji_policy` and `reaction_fit` run once per distinct
    list of predicted labels, not once per image.

    probs: (N, L) calibrated scores in the config's label order; chosen: (N, L) bool decisions.
    """
    labels = config.names
    emojis = list(dict.fromkeys(e for name in labels for e in (*config.label(name).allowed, *config.label(name).blocked)))
    code = {e: j for j, e in enumerate(emojis)}
    order = np.argsort(-probs, axis=1, kind="stable")  # stable: ties keep label order, as list.sort does
    ranked_chosen = np.take_along_axis(chosen, order, axis=1)
    predicted = order[ranked_chosen]
    predicted_offsets = _offsets(ranked_chosen.sum(axis=1))
    # Rows with the same predicted labels in the same order share one policy answer. Each row's
    # pattern is read as a number in base L + 1 (a sort of N integers, not of N rows of L).
    patterns = np.where(ranked_chosen, order, -1)
    count = probs.shape[1]
    if (count + 1) ** count < 2**63:
        codes = (patterns + 1) @ ((count + 1) ** np.arange(count, dtype=np.int64))
        _, first, group = np.unique(codes, return_index=True, return_inverse=True)
        keys = patterns[first]
    else:
        keys, group = np.unique(patterns, axis=0, return_inverse=True)
    group = group.reshape(-1)
    answers = []
    for key in keys:
        names = [labels[j] for j in key if j >= 0]
        allowed, blocked = emoji_policy(names, config)
        answers.append((names, [j for j in key if j >= 0], allowed, blocked))
    allowed_offsets = _offsets(np.array([len(a[2]) for a in answers], np.int64)[group])
    blocked_offsets = _offsets(np.array([len(a[3]) for a in answers], np.int64)[group])
    allowed_out = np.empty(allowed_offsets[-1], np.int64)
    fit_out = np.empty(allowed_offsets[-1], np.float64)
    blocked_out = np.empty(blocked_offsets[-1], np.int64)
    for g, (names, columns, allowed, blocked) in enumerate(answers):
        rows = np.flatnonzero(group == g)
        if allowed:
            fit = reaction_fit(allowed, names, probs[rows][:, columns], config)
            rank = np.argsort(-fit, axis=1, kind="stable")  # stable: ties keep policy order, as sorted() does
            where = allowed_offsets[rows][:, None] + np.arange(len(allowed))
            allowed_out[where] = np.array([code[e] for e in allowed])[rank]
            fit_out[where] = np.take_along_axis(fit, rank, axis=1)
        if blocked:
            blocked_out[blocked_offsets[rows][:, None] + np.arange(len(blocked))] = [code[e] for e in blocked]
    return Reactions(predicted, predicted_offsets, allowed_out, fit_out, allowed_offsets, blocked_out,
                     blocked_offsets, emojis)


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Gives (N + 1,) int64 offsets of ragged rows with these counts."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
