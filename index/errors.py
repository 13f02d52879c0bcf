"""The store's one error type, in a module of its own so that every part of the store can raise it."""


class StoreError(RuntimeError):
    """The store is missing, damaged or built for another model; the message names the file."""
