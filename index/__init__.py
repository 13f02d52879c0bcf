"""The embedding store (vectors + SQLite metadata + FAISS index) and exact cosine search.

(`search`, the function, is imported from `emoreact.index.search`: the submodule of that name would
shadow it here.)"""
from typing import TYPE_CHECKING

from emoreact.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it (imported on first use; see emoreact/lazy.py)
    "atomic_path": "atomic",
    "atomic_write_bytes": "atomic",
    "atomic_write_text": "atomic",
    "Grouping": "grouping",
    "NEAR_DUPLICATE_THRESHOLD": "dedup:DEFAULT_THRESHOLD",
    "near_duplicate_groups": "dedup",
    "read_manifest": "manifest",
    "Relabel": "relabel",
    "read_relabel_manifest": "relabel",
    "SPLITS": "schema",
    "brute_force_search": "search",
    "build_index": "search",
    "Item": "store",
    "Store": "store",
    "StoreError": "errors",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .atomic import atomic_path, atomic_write_bytes, atomic_write_text
    from .dedup import DEFAULT_THRESHOLD as NEAR_DUPLICATE_THRESHOLD
    from .dedup import near_duplicate_groups
    from .errors import StoreError
    from .grouping import Grouping
    from .manifest import read_manifest
    from .relabel import Relabel, read_relabel_manifest
    from .schema import SPLITS
    from .search import brute_force_search, build_index
    from .store import Item, Store
