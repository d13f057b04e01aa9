"""file:// store for `spatialforge run` on a laptop."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from spatialforge.runner.errors import InputNotFoundError, InvalidOutputError, InvalidSpecError, StorageError
from spatialforge.runner.storage.base import ArtifactStore, ObjectInfo, sha256_hex


def file_path(uri: str) -> Path:
    """The local path of an absolute `file:///path` URI; a URI with a host is refused."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"not a file:// URI: {uri}")
    if parsed.netloc:
        raise InvalidSpecError(f"file:// URI with a host ({parsed.netloc!r}) is not supported: {uri[:200]}")
    return Path(unquote(parsed.path))


def file_uri(path: Path, *, prefix: bool = False) -> str:
    out = Path(path).resolve().as_uri()
    return out + "/" if prefix else out


class LocalStore(ArtifactStore):
    """Objects are files; writes go to a temp file first and are renamed into place."""

    scheme = "file"

    def get(self, uri: str) -> bytes:
        path = file_path(uri)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise InputNotFoundError(f"no such file: {uri}") from exc

    def open(self, uri: str) -> BinaryIO:
        try:
            return open(file_path(uri), "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise InputNotFoundError(f"no such file: {uri}") from exc

    def put(self, uri: str, data: bytes, *, content_type: str | None = None) -> str:
        path = file_path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc
        return sha256_hex(data)

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Written to a temp file, then hard-linked into place: link(2) fails when the name
        exists, so of two writers one wins, and a reader never sees a half-written file."""
        path = file_path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.link(tmp, path)
            finally:
                os.unlink(tmp)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc
        return True

    def check_writable(self, prefix: str) -> None:
        """The deepest existing folder on the way is a folder and takes a probe file (else
        InvalidOutputError). Creates nothing: folders appear with the first output."""
        root = file_path(prefix)
        existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
        if not existing.is_dir():
            raise InvalidOutputError(f"output {file_uri(existing)} is an existing file, not a folder")
        try:
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise InvalidOutputError(f"output {prefix} cannot be written ({file_uri(existing)}: {exc.strerror or exc})") from exc

    def remove_empty_folder(self, prefix: str) -> None:
        """Remove a folder if it is empty (the staging folder after the last attempt)."""
        try:
            file_path(prefix).rmdir()
        except OSError:
            pass

    def delete(self, uri: str) -> None:
        try:
            file_path(uri).unlink(missing_ok=True)
        except IsADirectoryError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {uri}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Remove the prefix's folder with everything in it (temp files of killed writers too)."""
        root = file_path(prefix)
        if not root.is_dir():
            return 0
        count = sum(1 for p in root.rglob("*") if p.is_file())
        try:
            shutil.rmtree(root)
        except OSError as exc:
            raise StorageError(f"cannot delete {prefix}: {exc}") from exc
        return count

    def move(self, src: str, dst: str) -> None:
        target = file_path(dst)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file_path(src), target)
        except FileNotFoundError as exc:
            raise InputNotFoundError(f"no such file: {src}") from exc
        except OSError as exc:
            raise StorageError(f"cannot move {src} to {dst}: {exc}") from exc

    def list(self, prefix: str) -> list[ObjectInfo]:
        root = file_path(prefix)
        if not root.is_dir():
            return []
        out = [
            ObjectInfo(uri=p.resolve().as_uri(), size=p.stat().st_size)
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        ]
        return sorted(out, key=lambda o: o.uri)

    def stat(self, uri: str) -> ObjectInfo | None:
        path = file_path(uri)
        if not path.is_file():
            return None
        return ObjectInfo(uri=uri, size=path.stat().st_size)

    def download(self, uri: str, path: Path) -> Path:
        return Path(path) if Path(path) == file_path(uri) else super().download(uri, path)
