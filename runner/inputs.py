"""Expanding input URIs (objects and prefixes) into the list of files to process."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable

from spatialforge.runner.errors import InputNotFoundError
from spatialforge.runner.storage import ArtifactStore, ObjectInfo


def expand(
    uris: Iterable[str], store_for: Callable[[str], ArtifactStore], *, accept: Callable[[str], bool]
) -> list[tuple[ObjectInfo, str]]:
    """Each input's objects with an output stem; a prefix keeps only names `accept` likes.

    Raises InputNotFoundError for a missing object or a prefix without any usable file.
    The stem is the path under the prefix (or the base name) without extension, made unique.
    """
    found: dict[str, tuple[ObjectInfo, str]] = {}
    for uri in uris:
        store = store_for(uri)
        if uri.endswith("/"):
            objects = [o for o in store.list(uri) if accept(o.uri)]
            if not objects:
                raise InputNotFoundError(f"input prefix {uri} holds no usable file")
            for obj in objects:
                found.setdefault(obj.uri, (obj, obj.uri[len(uri):]))
        else:
            info = store.stat(uri)
            if info is None:
                raise InputNotFoundError(f"input {uri} does not exist")
            found.setdefault(uri, (info, posixpath.basename(uri)))
    out: list[tuple[ObjectInfo, str]] = []
    used: set[str] = set()
    for uri in sorted(found):
        info, rel = found[uri]
        stem = re.sub(r"[^A-Za-z0-9._/-]", "_", posixpath.splitext(rel)[0]).strip("/") or "image"
        candidate, n = stem, 1
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        out.append((info, candidate))
    return out
