"""s3syncd: keep a local data folder and an S3 prefix in two-way sync, asking first.

The library API of the original ``s3synchrony`` package is kept: ``get_supported_platforms``,
``smart_sync`` and ``reset_all``, with the same names and keyword arguments.
"""

from __future__ import annotations

from s3syncd.api import get_supported_platforms, reset_all, smart_sync

__all__ = ["get_supported_platforms", "reset_all", "smart_sync"]
__version__ = "0.1.0"
