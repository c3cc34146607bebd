"""The object store: block payloads and parquet partitions, on a local directory or S3.

Keys are relative to the store root (`blobs/...`, `views/...`), as in micromegas. Block payloads are
written create-only, so a retried upload never replaces what is stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import mmap
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow.fs as pafs
from datafusion import SessionContext
from datafusion.object_store import AmazonS3

# A local object is written this many bytes per write(). On this machine (ext4, Linux 6.18, in a VM)
# one 4 MiB write cost 6-8x the CPU of the same bytes in 64 KiB writes in some states of its memory
# (9.6 against 1.3 ms, alternating in one run; the copy into large page-cache folios was the slow
# part) and ~20% less in others: smaller writes bound the worst case. A served 4 MiB block took
# 3.6-3.8 ms of CPU with 64 KiB writes, 7.6-8.8 with 512 KiB and 8.8-11.2 with one write (3 rounds
# alternated); 32 and 128 KiB measured as 64. Fewer bytes a write cost more syscalls.
_WRITE_CHUNK = 64 * 1024


class ObjectStoreError(Exception):
    """The store could not be reached or refused an operation; callers may retry."""


@contextlib.contextmanager
def _storage_errors(action: str, key: str) -> Iterator[None]:
    """Lets 'exists' / 'not found' through and turns every other failure (botocore's errors are not
    OSErrors) into ObjectStoreError, without the store's internals in the message."""
    try:
        yield
    except (FileExistsError, FileNotFoundError):
        raise
    except Exception as err:
        raise ObjectStoreError(f"cannot {action} object {key}: {err.__class__.__name__}") from err


class ObjectStore:
    """A store of objects by key under a `file://` or `s3://` root URI (optionally on an S3-compatible endpoint)."""

    def __init__(self, uri: str, s3_endpoint: str | None = None) -> None:
        parts = urllib.parse.urlsplit(uri)
        self.uri = uri.rstrip("/")
        self.scheme = parts.scheme
        self.s3_endpoint = s3_endpoint
        if parts.scheme == "file":
            self.root = urllib.parse.unquote(parts.path).rstrip("/") or "/"
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self.fs = fsspec.filesystem("file")
        elif parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"object store URI {uri!r} names no bucket")
            self.root = f"{parts.netloc}{parts.path}".rstrip("/")
            client_kwargs = {"endpoint_url": s3_endpoint} if s3_endpoint else {}
            # Few, quick retries: the callers (ingestion clients, the daemon) retry on their own.
            self.fs = fsspec.filesystem(
                "s3",
                client_kwargs=client_kwargs,
                skip_instance_cache=True,
                config_kwargs={"connect_timeout": 5, "retries": {"max_attempts": 2}},
            )
        else:
            raise ValueError(f"unsupported object store URI {uri!r}: use file:///path or s3://bucket/prefix")

    def path(self, key: str) -> str:
        """Path of a key inside `self.fs` (no scheme)."""
        return f"{self.root}/{key}"

    def url(self, key: str) -> str:
        """A key as the URL DataFusion reads it from (a local path, or s3://bucket/prefix/key)."""
        return f"{self.root}/{key}" if self.scheme == "file" else f"s3://{self.root}/{key}"

    def register_with(self, ctx: SessionContext) -> None:
        """Lets a DataFusion session read this store's S3 URLs (local paths need nothing)."""
        if self.scheme != "s3":
            return
        bucket = self.root.split("/", 1)[0]
        endpoint = self.s3_endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        store = AmazonS3(
            bucket_name=bucket,
            region=region,
            access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            endpoint=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
        )
        ctx.register_object_store("s3://", store, bucket)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Writes `data` unless the key exists. True if written now, False if it was already there. A
        view is written as it is to a local store (S3's client takes bytes: copied there)."""
        try:
            with _storage_errors("write", key):
                if self.scheme == "file":
                    return self._put_local_if_absent(self.path(key), data)
                self.fs.pipe_file(self.path(key), bytes(data), mode="create")
                return True
        except FileExistsError:
            return False

    def put(self, key: str, data: bytes) -> None:
        """Writes `data` under `key`, replacing any object there (atomically on a local store)."""
        with _storage_errors("write", key):
            if self.scheme == "file":
                self._put_local_atomic(self.path(key), data)
            else:
                self.fs.pipe_file(self.path(key), data)

    def get(self, key: str) -> bytes:
        """The bytes stored under `key` (FileNotFoundError if there are none)."""
        with _storage_errors("read", key):
            return self.fs.cat_file(self.path(key))

    def exists(self, key: str) -> bool:
        """True if an object is stored under `key`."""
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        """Size in bytes of the object under `key`."""
        return int(self.fs.size(self.path(key)))

    def delete(self, key: str) -> None:
        """Deletes the object under `key`, if there is one."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def remove_empty_directory(self, key: str) -> None:
        """Removes the directory of a local store under `key` if it is empty (an S3 store has none)."""
        if self.scheme != "file":
            return
        try:
            os.rmdir(self.path(key))
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise

    def list(self, prefix: str) -> list[str]:
        """Keys under a prefix (recursively), relative to the root."""
        base = self.path(prefix).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        return sorted(p.removeprefix(root) for p in found)

    def list_modified_before(self, prefix: str, cutoff: dt.datetime) -> list[str]:
        """Keys under a prefix (recursively, relative to the root) last modified before the cutoff."""
        try:
            with _storage_errors("list", prefix):
                found = self.fs.find(self.path(prefix).rstrip("/"), detail=True)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        # Other S3 tools' directory markers (objects named `dir/`) are not objects of this store.
        old = (path for path, info in found.items() if not path.endswith("/") and _modified(info) < cutoff)
        return sorted(path.removeprefix(root) for path in old)

    def ping(self) -> None:
        """Raises ObjectStoreError if the store does not answer a listing."""
        try:
            with _storage_errors("list", self.root):
                self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root inside it, for parquet reading and writing.

        For S3 this is pyarrow's own client (fewer requests, coalesced reads) with the same endpoint
        and the usual AWS_* credentials."""
        if self.scheme == "file":
            return pafs.LocalFileSystem(), self.root
        options: dict[str, str] = {}
        if self.s3_endpoint:
            endpoint = urllib.parse.urlsplit(self.s3_endpoint)
            options = {"endpoint_override": endpoint.netloc or endpoint.path, "scheme": endpoint.scheme or "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        return pafs.S3FileSystem(**options), self.root

    def stage(self, data: bytes | memoryview = b"") -> StagedObject:
        """A new temporary file of this local store holding `data`, an object's first bytes, before its
        key is known (OSError, and no file left, if it cannot be written)."""
        staged = StagedObject(self)
        try:
            staged.write(data)
        except OSError:
            staged.discard()
            raise
        return staged

    @staticmethod
    def _put_local_if_absent(path: str, data: bytes | memoryview) -> bool:
        # Write a temporary file, then hard-link it into place: link() fails if the name exists,
        # so the object appears whole or not at all and is never replaced.
        tmp = ObjectStore._write_temp(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    @staticmethod
    def _put_local_atomic(path: str, data: bytes) -> None:
        tmp = ObjectStore._write_temp(path, data)
        os.replace(tmp, path)

    @staticmethod
    def _write_temp(path: str, data: bytes | memoryview) -> str:
        # A unique name without tempfile's random-name retries: this runs once per ingested block.
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:_WRITE_CHUNK]) :]
        finally:
            os.close(fd)
        return tmp


class StagedObject:
    """An object's bytes written into a temporary file of a local store (`blobs/staged.<hex>.tmp`, a
    name the orphan sweep removes if a kill leaves it) before its key is known or its content checked:
    `publish` links it under its key create-only, `discard` removes the temporary name. Written by
    `write` or through `fd` (splice)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.path = store.path(f"blobs/staged.{uuid.uuid4().hex}.tmp")
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self.mapped: mmap.mmap | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Appends `data` (64 KiB a write, as `put_if_absent` writes)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view[:_WRITE_CHUNK]) :]

    def view(self) -> memoryview:
        """The bytes written, read in place from the page cache (a read-only mapping; empty if none)."""
        size = os.fstat(self.fd).st_size
        if not size:
            return memoryview(b"")
        if self.mapped is None:
            self.mapped = mmap.mmap(self.fd, size, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        return memoryview(self.mapped)

    def publish(self, key: str) -> bool:
        """Links the bytes under `key` unless it exists (as `put_if_absent`): True if stored now."""
        path = self.store.path(key)
        try:
            with _storage_errors("write", key):
                try:
                    os.link(self.path, path)
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    os.link(self.path, path)
        except FileExistsError:
            return False
        return True

    def discard(self) -> None:
        """Removes the temporary name and closes the file (a published object stays under its key)."""
        if self.fd < 0:
            return
        os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1
        if self.mapped is not None:
            with contextlib.suppress(BufferError):  # a view still held keeps the mapping until it is freed
                self.mapped.close()


def _modified(info: dict) -> dt.datetime:
    """When a listed object was last modified: a local file's `mtime`, an S3 object's `LastModified`."""
    if "LastModified" in info:
        return info["LastModified"]
    return dt.datetime.fromtimestamp(info["mtime"], dt.UTC)
