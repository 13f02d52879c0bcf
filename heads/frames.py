"""One answer for a clip (an animation or a video) from its chosen frames, and the timeline behind it.

A clip's frames are chosen by time (embed/clips.py), each standing for a share of the clip's duration
(its weight). Three ways to pool them into the clip's scores, `POOLINGS`:

- "share" (the default): a label is predicted when the frames the head gives it (its own decision on
  each frame) cover at least `SHARE` of the clip's time, the rule a clip is labelled by (a reaction
  GIF's sad half is sad, whatever its other half shows); its score is the one its frames hold for that
  share of the time (a time-weighted quantile of the frames' scores);
- "scores": the time-weighted mean of the frames' scores: a label shown for part of the clip keeps that
  share of its score, and falls under a threshold tuned on stills;
- "features": the head scores the time-weighted mean of the frames' unit vectors (normalised,
  `emoreact.embed.pool_vectors`): the one vector a store keeps for the clip; two faces in turn average
  to a vector the head reads as neither.

`bench clips` measures the three on clips made from the demo's art (bench/RESULTS.md): share 0.68,
scores 0.59, features 0.54 macro-F1, against 0.67 for stills of the same art.
Whatever the pooling, each frame's own scores make the timeline, and a label's peak is the frame whose
score for it is highest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POOLINGS = ("share", "scores", "features")
SHARE = 0.3  # a clip shows a label when frames showing it cover at least this share of its time


@dataclass(frozen=True)
class FrameScores:
    """A clip's frames as the head sees them: each frame's scores and labels, in time order."""

    times_ms: list[int]
    probs: np.ndarray  # (F, L) each frame's own scores
    chosen: np.ndarray  # (F, L) bool: each frame's own labels, by the head's thresholds

    def pooled(self, weights: np.ndarray) -> np.ndarray:
        """Gives the (L,) time-weighted mean of the frames' scores (the "scores" pooling)."""
        return (np.asarray(weights, np.float64) @ self.probs).astype(np.float32)

    def held(self, weights: np.ndarray, share: float = SHARE) -> np.ndarray:
        """Gives per label the highest score that frames covering at least `share` of the time all reach (the
        "share" pooling): over a threshold exactly when the frames over it stand for `share` of the clip."""
        order = np.argsort(-self.probs, axis=0, kind="stable")  # (F, L): each label's frames, best first
        best_first = np.take_along_axis(self.probs, order, axis=0)
        covered = np.cumsum(np.asarray(weights, np.float64)[order], axis=0)
        reached = np.argmax(covered >= share - 1e-9, axis=0)  # the first frame where the share is covered
        return best_first[reached, np.arange(self.probs.shape[1])].astype(np.float32)

    def shown(self, weights: np.ndarray, share: float = SHARE) -> np.ndarray:
        """Gives (L,) bool: the labels the head gives frames covering at least `share` of the time together
        (the "share" pooling's labels; none when no label is shown that long)."""
        return np.asarray(weights, np.float64) @ self.chosen >= share - 1e-9

    def pool(self, pooling: str, weights: np.ndarray) -> np.ndarray:
        """Gives the (L,) clip scores of a score pooling ("share" or "scores")."""
        return self.held(weights) if pooling == "share" else self.pooled(weights)

    def peaks(self, labels: list[str]) -> dict[str, int]:
        """Gives, per label, the time of the frame whose score for it is highest (the first such frame)."""
        best = np.argmax(self.probs, axis=0)
        return {label: int(self.times_ms[best[j]]) for j, label in enumerate(labels)}

    def strongest(self) -> np.ndarray:
        """Gives the (L,) highest score of any single frame per label (the answer's `frames` channel)."""
        return self.probs.max(axis=0)

    def timeline(self, labels: list[str]) -> list[dict]:
        """Gives one {"t_ms", "emotions" (strongest first), "emotion_scores"} per frame, in time order."""
        moments = []
        for t, p, c in zip(self.times_ms, self.probs, self.chosen):
            shown = sorted((label for label, on in zip(labels, c) if on), key=lambda label: -p[labels.index(label)])
            moments.append({"t_ms": int(t), "emotions": shown, "emotion_scores": dict(zip(labels, p.tolist()))})
        return moments


def frame_scores(head, vectors: np.ndarray, times_ms: list[int], text: np.ndarray | None = None) -> FrameScores:
    """Gives the head's scores of a clip's (F, D) frame vectors; `text` (D,) is the post's text vector (zero:
    no words), which a post head reads beside every frame as it does beside a still image."""
    words = None if text is None else np.repeat(np.asarray(text, np.float32)[None, :], len(vectors), axis=0)
    probs = head.predict_proba(np.asarray(vectors, np.float32), text=words)
    return FrameScores(list(times_ms), probs, head.decide(probs, words))


__all__ = ["POOLINGS", "SHARE", "FrameScores", "frame_scores"]
