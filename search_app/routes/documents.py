"""Your own documents: upload into named collections, list, download, delete.

The work (sniffing, extraction, indexing, ownership) is in search_app/collections.py;
these routes read the request and choose the response. Every error is the usual JSON
error with a 4xx status (docs/search-api.md lists them).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from search_app.collections import UPLOAD_PATH
from search_app.deps import CollectionsDep, OwnerDep, SettingsDep
from serving.errors import NotFoundError, PayloadTooLargeError, PermissionDeniedError
from serving.protocol import ErrorResponse

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["documents"])

_READ_CHUNK = 1024 * 1024
# How the original file is sent back: never as HTML, never sniffed into something
# else. PDFs and text open in the browser (a citation's #page=N works in its PDF
# viewer); HTML and Word documents are downloads.
_SEND_AS = {"pdf": ("application/pdf", "inline"),
            "text": ("text/plain; charset=utf-8", "inline"),
            "markdown": ("text/plain; charset=utf-8", "inline"),
            "html": ("text/plain; charset=utf-8", "attachment"),
            "docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml."
                     "document", "attachment")}


@router.post(UPLOAD_PATH.removeprefix("/api"), status_code=201, responses={
    415: {"model": ErrorResponse, "description": "Not a supported type (read from the "
                                                 "content): PDF, DOCX, Markdown, HTML or "
                                                 "UTF-8 text."}})
async def upload(request: Request, collections: CollectionsDep, owner: OwnerDep,
                 settings: SettingsDep,
                 file: UploadFile = File(..., description="PDF, DOCX, Markdown, HTML or "
                                                          "UTF-8 text; the type is read "
                                                          "from the content."),
                 collection: str = Form(..., max_length=200, description="Collection "
                                        "name (made if new).")) -> dict[str, Any]:
    """Index one file into a collection; the document's record."""
    _same_origin(request, settings.cors_origins)
    limit = collections.limits.max_bytes
    data = bytearray()
    while chunk := await file.read(_READ_CHUNK):  # stops at the cap, not at the end
        data += chunk
        if len(data) > limit:
            raise PayloadTooLargeError(f"The file is larger than the upload limit of "
                                       f"{limit:,} bytes.", param="file")
    return await collections.add(owner, collection, file.filename or "", bytes(data))


@router.get("/collections")
async def list_collections(collections: CollectionsDep, owner: OwnerDep) -> dict[str, Any]:
    """Your collections with their document counts."""
    return {"collections": await collections.list(owner)}


@router.get("/collections/{name}/documents")
async def list_documents(name: str, collections: CollectionsDep, owner: OwnerDep
                         ) -> dict[str, Any]:
    return {"collection": name, "documents": await collections.documents(owner, name)}


@router.get("/documents/{document_id}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The original file."}})
async def download(document_id: str, collections: CollectionsDep, owner: OwnerDep
                   ) -> FileResponse:
    """The original file, as a download or inline (PDF, text), never as a web page."""
    record, path = await collections.document(owner, document_id)
    if not path.is_file():  # the record is shared; the file lives where it was uploaded
        raise NotFoundError(f"The file of document {document_id!r} is not on this server "
                            "(uploaded to another replica, or removed).", param="id")
    media_type, disposition = _SEND_AS.get(record["kind"], ("application/octet-stream",
                                                            "attachment"))
    name = record["filename"]
    ascii_name = "".join(c if c.isascii() and c.isalnum() or c in "._- " else "_"
                         for c in name) or "document"
    headers = {"Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; "
                                      f"filename*=UTF-8''{quote(name, safe='')}",
               "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"}
    if record["kind"] != "pdf":  # browsers refuse to show a PDF in a sandboxed document;
        # a PDF is shown by the browser's own viewer, never as a page of this origin
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return FileResponse(path, media_type=media_type, headers=headers)


@router.delete("/documents/{document_id}")
async def delete_document(document_id: str, collections: CollectionsDep, owner: OwnerDep
                          ) -> dict[str, Any]:
    await collections.delete_document(owner, document_id)
    return {"deleted": document_id}


@router.delete("/collections/{name}")
async def delete_collection(name: str, collections: CollectionsDep, owner: OwnerDep
                            ) -> dict[str, Any]:
    """The collection, its documents and its index."""
    count = await collections.delete_collection(owner, name)
    return {"deleted": name, "documents": count}


def _same_origin(request: Request, allowed: list[str]) -> None:
    """A multipart POST is a "simple" request that any web page may send without a CORS
    preflight; where there are no accounts or keys (no session, so no CSRF token) it
    would let another site upload into this app. Browsers name the page's origin on
    such requests: one that is neither this app's nor allowed by CORS is refused."""
    origin = request.headers.get("origin")
    if origin and origin in allowed:
        return
    if request.headers.get("sec-fetch-site") == "cross-site" or (
            origin and (origin == "null" or urlsplit(origin).netloc != request.url.netloc)):
        raise PermissionDeniedError("Uploads are accepted from this app's own pages or from "
                                    "API clients, not from other sites.")
