"""chatctl: a command-line tool and server for the m3o Chat API.

This module holds the version only, so ``chatctl --version`` stays cheap.
"""

__version__ = "0.2.0"
__all__ = ["__version__"]
