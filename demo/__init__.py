"""The offline demo's data: emoji images in three styles, their labels and manifest, the label config.

Data only, shipped in the wheel; the demo itself is `emoreact.offline_demo` (`emoreact demo`).
"""
from pathlib import Path

DEMO_DIR = Path(__file__).parent  # images/<style>/<hexcode>.png, manifest.csv, labels.csv, labels.toml
