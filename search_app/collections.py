"""Your own documents: named collections of uploaded files, searched beside the web.

Why one local index per collection (``<data_dir>/collections/<id>/index/``, the original
files in ``.../files/``): collections stay isolated (a question sees only the ones it
names, and their owner's), a change rebuilds only that collection's small snapshot, and
deleting a collection is deleting a folder. All of them share the app's embedding model
and its embedding cache, so nothing is loaded twice.

The records (which collections an owner has, which documents are in them) live in the
answer store (search_app/store.py), so listings and ownership are the same on every
replica; the index files are on the disk of the replica that took the upload (see
docs/deploy.md).

An upload is all or nothing: the file is sniffed and its text extracted in full
(retrieval/uploads.py) before anything is written; then the file is kept, indexed and
recorded, and a failure at any step undoes the steps before it.

Owners: a signed-in user of multi-user mode (``user:NAME``) owns their collections and
nobody else sees them (404, as for a name that does not exist); without accounts every
caller is the app's one user (:data:`APP_OWNER`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.corpus import SourceText
from retrieval.embeddings import EmbeddingModel
from retrieval.index import LocalIndex
from retrieval.types import SearchResult
from retrieval.uploads import (
    MEDIA_TYPES,
    DocumentKind,
    ExtractLimits,
    Section,
    UploadRejected,
    extract_sections,
    sniff_upload,
)
from search_app.store import Store
from serving.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServingError,
    UnsupportedMediaError,
)

__all__ = ["APP_OWNER", "COLLECTION_PROVIDER", "UPLOAD_PATH", "Collections", "CollectionLimits",
           "NotFoundError", "UnsupportedMediaError", "document_url", "valid_name"]

log = logging.getLogger(__name__)

APP_OWNER = "app"                 # the owner when there are no accounts
UPLOAD_PATH = "/api/documents"    # POST: its body may be as large as the upload cap
COLLECTION_PROVIDER = "collection"  # SearchResult.provider of uploaded documents
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_MAX_FILENAME = 200


@dataclass(frozen=True)
class CollectionLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_documents: int = 200
    max_collections: int = 20
    extract: ExtractLimits = ExtractLimits()


async def chosen(collections: Collections | None, owner: str, names: Sequence[str],
                 web: bool) -> list[str]:
    """The ids of the collections a question names, for every face that takes them
    (``/api/search``, the answer model, MCP): a 400 for none named with the web off or
    for an app without uploads, a 404 for a name ``owner`` has no collection by."""
    if not web and not names:
        raise BadRequestError("With web false, name at least one collection to search.",
                              param="collections")
    if not names:
        return []
    if collections is None:
        raise BadRequestError("This app has no uploaded documents.", param="collections")
    return [await collections.resolve(owner, name) for name in names]


def owner_of(principal: str | None) -> str:
    """Whose collections a caller sees: a multi-user account's own (``user:NAME``),
    else the app's (one user; API keys share them)."""
    from search_app.users import USER_PREFIX

    return principal if principal and principal.startswith(USER_PREFIX) else APP_OWNER


def valid_name(name: str) -> str:
    """A collection name: 1-64 letters, digits, spaces, dots, dashes or underscores,
    starting with a letter or digit (400 otherwise)."""
    name = name.strip() if isinstance(name, str) else ""
    if not _NAME.match(name):
        raise BadRequestError("A collection name is 1-64 characters: letters, digits, "
                              "spaces, '.', '_' or '-', starting with a letter or digit.",
                              param="collection")
    return name


def document_url(document_id: str, anchor: str = "") -> str:
    """Where a citation of a document's section points (the app serves the file)."""
    return f"/api/documents/{document_id}" + (f"#{anchor}" if anchor else "")


class Collections:
    """Upload, list, delete and search collections (one instance per app)."""

    def __init__(self, root: Path, store: Store, model: EmbeddingModel,
                 limits: CollectionLimits | None = None) -> None:
        self.root = Path(root)
        self.store = store
        self.model = model
        self.limits = limits or CollectionLimits()
        self._indexes: dict[str, LocalIndex] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # --- uploads ---------------------------------------------------------------------

    async def add(self, owner: str, collection: str, filename: str, data: bytes
                  ) -> dict[str, Any]:
        """Index one file into ``owner``'s ``collection`` (made if new); its record."""
        name = valid_name(collection)
        filename = _safe_filename(filename)
        if len(data) > self.limits.max_bytes:
            raise _too_large(self.limits.max_bytes)
        try:  # both off the event loop: sniffing decodes and unzips up to max_bytes
            kind, sections = await asyncio.to_thread(self._read, data, filename)
        except UploadRejected as exc:
            raise _http_error(exc) from None
        new_id = uuid.uuid4().hex
        collection_id = await asyncio.to_thread(
            self.store.create_collection, owner, name, new_id, self.limits.max_collections)
        if collection_id is None:
            raise BadRequestError(f"You have {self.limits.max_collections} collections, the "
                                  "limit: delete one, or add to an existing one.",
                                  param="collection")
        try:
            return await asyncio.to_thread(self._add, collection_id, name, filename, kind,
                                           data, sections)
        except BaseException:
            if collection_id == new_id and not await asyncio.to_thread(
                    self.store.documents, collection_id):  # made for this file: undo
                await asyncio.to_thread(self._drop, collection_id)
            raise

    def _read(self, data: bytes, filename: str) -> tuple[DocumentKind, list[Section]]:
        kind = sniff_upload(data, filename)
        return kind, extract_sections(data, kind, self.limits.extract)

    def _add(self, collection_id: str, collection: str, filename: str, kind: str,
             data: bytes, sections: list[Section]) -> dict[str, Any]:
        if len(self.store.documents(collection_id)) >= self.limits.max_documents:
            raise _full(self.limits.max_documents)
        doc_id = uuid.uuid4().hex
        sources = [SourceText(key=_key(doc_id, i), kind="upload",
                              url=document_url(doc_id, s.anchor), title=s.title(filename),
                              text=s.text) for i, s in enumerate(sections, 1)]
        keys = [s.key for s in sources]
        path = self._folder(collection_id) / "files" / doc_id
        with self._lock(collection_id):
            # deleted meanwhile (a DELETE, or a failed first upload's undo): deletes take
            # this lock too, so the check holds until the document is recorded
            if not self.store.collection_exists(collection_id):
                raise NotFoundError(f"Collection {collection!r} was deleted during the "
                                    "upload; upload the file again.", param="collection")
            index = self._index(collection_id)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                before = index.counts()[1]
                index.upsert(sources)
                record = {"id": doc_id, "collection_id": collection_id,
                          "filename": filename, "kind": kind, "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(),
                          "sections": len(sources),
                          "passages": index.counts()[1] - before, "created": time.time()}
                if not self.store.add_document(record, self.limits.max_documents):
                    raise _full(self.limits.max_documents)
            except BaseException:  # nothing half-indexed: undo the file and the passages
                path.unlink(missing_ok=True)
                try:
                    index.upsert([], remove=keys)
                except Exception as undo:  # the original error is the one to report
                    log.warning("undoing an upload to %s failed: %s", collection_id, undo)
                raise
        return _public(record, collection)

    # --- listing and reading ---------------------------------------------------------

    async def list(self, owner: str) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.store.collections, owner)
        return [{"name": r["name"], "documents": r["documents"], "created": r["created"]}
                for r in rows]

    async def documents(self, owner: str, collection: str) -> list[dict[str, Any]]:
        collection_id = await self.resolve(owner, collection)
        rows = await asyncio.to_thread(self.store.documents, collection_id)
        return [_public(r, collection) for r in rows]

    async def resolve(self, owner: str, collection: str) -> str:
        """The id of ``owner``'s collection; 404 when there is none by that name."""
        collection_id = None
        if isinstance(collection, str) and _NAME.match(collection.strip()):
            collection_id = await asyncio.to_thread(self.store.collection, owner,
                                                    collection.strip())
        if collection_id is None:
            raise NotFoundError(f"Collection {collection!r} not found.", param="collection")
        return collection_id

    async def document(self, owner: str, document_id: str) -> tuple[dict[str, Any], Path]:
        """A document's record and its original file; 404 unless ``owner``'s."""
        row = await self._owned(owner, document_id)
        return _public(row, row["collection"]), \
            self._folder(row["collection_id"]) / "files" / row["id"]

    async def _owned(self, owner: str, document_id: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self.store.document, document_id)
        if row is None or row["owner"] != owner:
            raise NotFoundError(f"Document {document_id!r} not found.", param="id")
        return row

    # --- deleting --------------------------------------------------------------------

    async def delete_document(self, owner: str, document_id: str) -> None:
        row = await self._owned(owner, document_id)
        path = self._folder(row["collection_id"]) / "files" / row["id"]

        def drop() -> None:
            with self._lock(row["collection_id"]):
                self.store.delete_document(document_id)
                self._index(row["collection_id"]).upsert(
                    [], remove=[_key(document_id, i) for i in range(1, row["sections"] + 1)])
                path.unlink(missing_ok=True)

        await asyncio.to_thread(drop)

    async def delete_collection(self, owner: str, collection: str) -> int:
        """Delete the collection, its documents and its index; how many documents."""
        collection_id = await self.resolve(owner, collection)
        count = len(await asyncio.to_thread(self.store.documents, collection_id))
        await asyncio.to_thread(self._drop, collection_id)
        return count

    def _drop(self, collection_id: str) -> None:
        with self._lock(collection_id):
            self.store.delete_collection(collection_id)
            with self._guard:
                index = self._indexes.pop(collection_id, None)
            if index is not None:
                index.close()
            shutil.rmtree(self._folder(collection_id), ignore_errors=True)

    # --- searching -------------------------------------------------------------------

    async def search(self, collection_ids: Sequence[str], query: str, k: int
                     ) -> list[SearchResult]:
        """The best sections of these collections, best first, each with its best
        passage as its text (what a ``local`` result carries): no page to read."""
        return await asyncio.to_thread(self._search, list(collection_ids), query, k)

    def _search(self, collection_ids: list[str], query: str, k: int) -> list[SearchResult]:
        found = []
        for collection_id in dict.fromkeys(collection_ids):
            # No index here: empty, just deleted, or uploaded on another replica (and
            # opening one would make its folder again).
            if not (self._folder(collection_id) / "index" / "snapshot").is_dir():
                continue
            found += self._index(collection_id).passages(query, k, max_per_source=1)
        found.sort(key=lambda p: -p.score)
        return [SearchResult(title=p.title, url=p.url, snippet=p.text,
                             provider=COLLECTION_PROVIDER, rank=i)
                for i, p in enumerate(found[:k], 1)]

    def close(self) -> None:
        with self._guard:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()

    # --- helpers ---------------------------------------------------------------------

    def _folder(self, collection_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", collection_id):  # ids are ours; never a path
            raise ValueError("bad collection id")
        return self.root / collection_id

    def _index(self, collection_id: str) -> LocalIndex:
        with self._guard:
            index = self._indexes.get(collection_id)
            if index is None:
                index = LocalIndex(self._folder(collection_id), self.model, use_gpu=False)
                self._indexes[collection_id] = index
            return index

    def _lock(self, collection_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(collection_id, threading.Lock())

def _key(document_id: str, section: int) -> str:
    return f"{document_id}/{section}"


def _public(row: dict[str, Any], collection: str) -> dict[str, Any]:
    return {"id": row["id"], "collection": collection, "filename": row["filename"],
            "kind": row["kind"], "media_type": MEDIA_TYPES.get(row["kind"], ""),
            "size": row["size"], "sha256": row["sha256"], "sections": row["sections"],
            "passages": row["passages"], "created": row["created"],
            "url": document_url(row["id"])}


def _safe_filename(name: str | None) -> str:
    """The name shown in citations: its last path part, printable, at most 200 chars."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable() and c not in '"<>|*?:')
    return base.strip(" .")[:_MAX_FILENAME] or "document"


def _too_large(limit: int) -> ServingError:
    return PayloadTooLargeError(f"The file is larger than the upload limit of {limit:,} "
                                "bytes.", param="file")


def _full(limit: int) -> BadRequestError:
    return BadRequestError(f"The collection has {limit} documents, the limit: delete some, "
                           "or use another collection.", param="collection")


def _http_error(exc: UploadRejected) -> ServingError:
    if exc.kind == "unsupported":
        return UnsupportedMediaError(exc.message, param="file")
    if exc.kind == "too_large":
        return PayloadTooLargeError(exc.message, param="file")
    return BadRequestError(exc.message, param="file")
