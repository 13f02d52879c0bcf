"""The label config: labels, zero-shot prompts, emoji policy and dataset label maps, from TOML."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import emoji

DEFAULT_LABELS_PATH = Path(__file__).with_name("labels.toml")


class ConfigError(ValueError):
    """The label config is wrong; the message names the file, line and fix."""


@dataclass(frozen=True)
class LabelSpec:
    """One label: its prompt names and its emoji policy."""

    name: str
    names: tuple[str, ...]  # words put into the zero-shot templates
    allowed: tuple[str, ...]  # emojis that fit an image with this label
    blocked: tuple[str, ...]  # emojis that must never be offered for such an image


@dataclass(frozen=True)
class LabelConfig:
    """The whole label config; `labels` order is the head's output order."""

    labels: tuple[LabelSpec, ...]
    templates: tuple[str, ...]
    datasets: Mapping[str, Mapping[str, str]]  # dataset -> its label -> our label ("" drops)
    text: str = ""  # the TOML it came from, copied into heads so predictions are reproducible
    # (emoji, weight) pairs from [reaction_weights]; a tuple, not a mapping, so that heads still pickle
    reaction_weights: tuple[tuple[str, float], ...] = ()

    def weight(self, emoji_: str) -> float:
        """Gives an emoji's reaction weight: its entry in [reaction_weights], else 1.0."""
        return float(dict(self.reaction_weights).get(emoji_, 1.0))

    @property
    def names(self) -> list[str]:
        """Gives the label names in output order."""
        return [spec.name for spec in self.labels]

    def label(self, name: str) -> LabelSpec:
        """Gives one label's spec."""
        for spec in self.labels:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def prompts(self, name: str) -> list[str]:
        """Gives every template filled with every prompt name of a label."""
        spec = self.label(name)
        return [t.format(n) for n in spec.names for t in self.templates]

    def map_label(self, dataset: str, raw: str, origin: str) -> str | None:
        """Gives our label for a dataset's label (None: drop the item), or raises naming the fix."""
        mapping = self.datasets.get(dataset, {})
        key = str(raw).strip()
        if key in mapping:
            return mapping[key] or None
        if key.lower() in self.names:
            return key.lower()
        raise ConfigError(f"{origin}: label {raw!r} is neither one of {self.names} nor mapped in "
                          f"[datasets.{dataset}] of the label config; add `{key} = \"<label>\"` there")


def load_label_config(path: str | Path | None = None) -> LabelConfig:
    """Gives the label config from a TOML file (the bundled default when `path` is None)."""
    path = Path(path) if path else DEFAULT_LABELS_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read label config {path}: {exc.strerror}") from exc
    return parse_label_config(text, origin=str(path))


def parse_label_config(text: str, origin: str = "<labels>") -> LabelConfig:
    """Gives the label config parsed and checked from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    where = _Locator(text, origin)
    raw_labels = data.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise ConfigError(f"{where('labels')}: the config defines no [labels.NAME] tables; add at least one")
    labels = tuple(_parse_label(name, body, where) for name, body in raw_labels.items())
    templates = data.get("prompts", {}).get("templates", ["a photo of a {} looking face."])
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ConfigError(f"{where('prompts', 'templates')}: templates must be a non-empty list of "
                          "strings that each contain {}")
    names = [spec.name for spec in labels]
    datasets = {}
    for dataset, mapping in data.get("datasets", {}).items():
        for raw, ours in mapping.items():
            if ours and ours not in names:
                raise ConfigError(f"{where('datasets.' + dataset, raw)}: maps {raw!r} to unknown label "
                                  f"{ours!r}; use one of {names} or \"\" to drop")
        datasets[dataset] = MappingProxyType({str(k): v for k, v in mapping.items()})
    unknown = set(data) - {"labels", "prompts", "datasets", "reaction_weights"}
    if unknown:
        raise ConfigError(f"{where(sorted(unknown)[0])}: unknown table {sorted(unknown)[0]!r}; "
                          "the config has [prompts], [labels.NAME], [datasets.NAME] and [reaction_weights]")
    weights = _parse_weights(data.get("reaction_weights", {}), where)
    return LabelConfig(labels, tuple(templates), MappingProxyType(datasets), text, tuple(weights.items()))


def _parse_weights(table: object, where: "_Locator") -> dict[str, float]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where('reaction_weights')}: [reaction_weights] must be a table of \"emoji\" = weight")
    weights = {}
    for key, value in table.items():
        if not emoji.is_emoji(key):
            raise ConfigError(f"{where('reaction_weights', key)}: {key!r} in [reaction_weights] is not a single "
                              "emoji; write the emoji itself in quotes, e.g. \"😂\" = 0.5")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ConfigError(f"{where('reaction_weights', key)}: the weight of {key} must be a number from 0 to "
                              f"10, got {value!r}; 1 is neutral")
        weights[key] = float(value)
    return weights


def _parse_label(name: str, body: object, where: "_Locator") -> LabelSpec:
    section = f"labels.{name}"
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"{where(section)}: label name {name!r} must be lower-case letters, digits or _")
    if not isinstance(body, dict):
        raise ConfigError(f"{where(section)}: [labels.{name}] must be a table")
    extra = set(body) - {"names", "allowed", "blocked"}
    if extra:
        raise ConfigError(f"{where(section, sorted(extra)[0])}: unknown key {sorted(extra)[0]!r} in "
                          f"[{section}]; keys are names, allowed, blocked")
    names = body.get("names", [name])
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"{where(section, 'names')}: names of {name!r} must be a non-empty list of words")
    allowed = body.get("allowed")
    if not allowed:
        raise ConfigError(f"{where(section, 'allowed')}: label {name!r} has no allowed emojis; "
                          "list at least one, e.g. allowed = [\"🙂\"]")
    for key in ("allowed", "blocked"):
        for item in body.get(key, []):
            if not isinstance(item, str) or not emoji.is_emoji(item):
                raise ConfigError(f"{where(section, key)}: {item!r} in {key} of {name!r} is not a single "
                                  "emoji; write the emoji itself, e.g. \"😢\"")
    both = set(allowed) & set(body.get("blocked", []))
    if both:
        raise ConfigError(f"{where(section, 'blocked')}: {''.join(sorted(both))} is both allowed and "
                          f"blocked for {name!r}; keep it in one list")
    return LabelSpec(name, tuple(names), tuple(allowed), tuple(body.get("blocked", [])))


class _Locator:
    """Finds the line of a table or key in TOML text, for error messages (tomllib keeps none)."""

    def __init__(self, text: str, origin: str) -> None:
        self.lines = text.splitlines()
        self.origin = origin

    def __call__(self, section: str, key: str | None = None) -> str:
        start = None
        header = re.compile(r"^\s*\[\s*" + re.escape(section) + r"\s*\]")
        for number, line in enumerate(self.lines, 1):
            if start is None and header.match(line):
                start = number
                if key is None:
                    break
            elif start is not None and key is not None:
                if line.lstrip().startswith("["):
                    break
                if re.match(r"^\s*\"?" + re.escape(str(key)) + r"\"?\s*=", line):
                    return f"{self.origin}, line {number}"
        return f"{self.origin}, line {start}" if start else self.origin
