"""Encoding stores: unit encodings of a whole dataset split, on disk (chunked, resumable) or in memory."""

from resi_dual.store.base import EncodingSource, MemorySource, RawBlock
from resi_dual.store.meta import Plan, StoreMeta

__all__ = ["EncodingSource", "MemorySource", "Plan", "RawBlock", "StoreMeta", "open_store"]


def open_store(path, **kwargs):
    """Open an on-disk store written by `resi-dual encode` (see `resi_dual.store.disk`)."""
    from resi_dual.store.disk import open_store as _open

    return _open(path, **kwargs)
