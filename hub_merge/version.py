"""hub-merge's version, in a module of its own so that any layer can read it without importing
the package's ``__init__`` (which registers methods from the layers above)."""

__version__ = "0.1.0"
