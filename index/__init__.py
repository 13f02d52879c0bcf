"""The embedding store (vectors + SQLite metadata + FAISS index) and exact cosine search."""
from .atomic import atomic_path, atomic_write_bytes, atomic_write_text
from .dedup import DEFAULT_THRESHOLD as NEAR_DUPLICATE_THRESHOLD
from .dedup import near_duplicate_groups
from .manifest import read_manifest
from .relabel import Relabel, read_relabel_manifest
from .search import brute_force_search, build_index, search
from .store import Item, Store, StoreError

__all__ = ["Store", "StoreError", "Item", "build_index", "search", "brute_force_search",
           "atomic_path", "atomic_write_bytes", "atomic_write_text", "read_manifest",
           "NEAR_DUPLICATE_THRESHOLD", "near_duplicate_groups", "Relabel", "read_relabel_manifest"]
