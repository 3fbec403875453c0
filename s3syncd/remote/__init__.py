"""Platform registry: built-ins plus the ``s3syncd.platforms`` entry-point group."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from s3syncd.errors import ConfigError
from s3syncd.remote.base import Remote

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "s3syncd.platforms"

# Built-ins are also listed here so a source checkout works without installed metadata.
# Importing them lazily keeps boto3 out of processes that only use the Local platform.
_BUILTIN = {
    "S3": "s3syncd.remote.s3:S3Remote",
    "Local": "s3syncd.remote.localdir:LocalDirRemote",
}


def _registry() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def platform_names() -> list[str]:
    plugins = sorted(n for n in _registry() if n not in _BUILTIN)
    return [*_BUILTIN, *plugins]


def platform_class(name: str) -> type[Remote]:
    registry = _registry()
    if name not in registry:
        known = ", ".join(platform_names())
        raise ConfigError(f"unknown platform {name!r}; supported: {known}")
    module_name, _, attr = registry[name].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Remote)):
        raise ConfigError(f"platform {name!r} ({registry[name]}) is not a Remote subclass")
    return cls
