"""Your own documents over the real HTTP API (search_app/routes/documents.py): upload
into a collection, list, download, ask with it (alone or with the web), delete; every
refusal is a 4xx JSON error and leaves nothing behind; collections are their owner's.
In process, with the scripted engine and a lexical embedder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from search_app.collections import CollectionLimits, Collections
from search_app.store import Store
from search_app.users import Users
from tests.app.support import ScriptedEngine, make_app, parse_sse
from tests.support.documents import docx_bomb, encrypted_pdf, pdf_file, scanned_pdf
from tests.support.retrieval_fixtures import CountingModel

PAGES = ["The Alpha river rises in the northern hills above Riverton.",
         "Three stone bridges cross the Alpha river at Riverton since 1850."]
ANSWER = ["Three stone bridges", " cross the Alpha river at Riverton", "[citation:1]."]
QUESTION = "How many stone bridges cross the Alpha river at Riverton?"


def _app(tmp_path: Path, *, settings: dict[str, Any] | None = None
         ) -> tuple[FastAPI, Store, Collections]:
    app, store = make_app(tmp_path, ScriptedEngine(ANSWER), settings=settings)
    s = app.state.settings
    collections = Collections(tmp_path / "collections", store, CountingModel(),
                              CollectionLimits(max_bytes=s.upload_max_bytes,
                                               max_documents=s.collection_max_documents,
                                               max_collections=s.collections_per_owner))
    app.state.answer.collections = collections  # what the lifespan wires
    app.state.answer.pipeline.collections = collections.search
    return app, store, collections


def _client(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                             **kwargs)


async def _upload(c: httpx.AsyncClient, name: str, data: bytes, collection: str = "reports",
                  **kwargs: Any) -> httpx.Response:
    return await c.post("/api/documents", data={"collection": collection},
                        files={"file": (name, data, "application/octet-stream")}, **kwargs)


async def _ask(c: httpx.AsyncClient, **body: Any) -> list[tuple[str, dict]]:
    r = await c.post("/api/search", json={"query": QUESTION, "related": False, **body})
    assert r.status_code == 200, r.text
    return parse_sse(r.text)


def _files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "collections").rglob("files/*")]


async def test_upload_list_ask_download_delete(tmp_path: Path) -> None:
    app, store, _ = _app(tmp_path)
    async with _client(app) as c:
        r = await _upload(c, "flood report.pdf", pdf_file(PAGES))
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["kind"] == "pdf" and doc["sections"] == 2 and doc["collection"] == "reports"
        assert doc["url"] == f"/api/documents/{doc['id']}"
        listed = (await c.get("/api/collections")).json()["collections"]
        assert [(x["name"], x["documents"]) for x in listed] == [("reports", 1)]
        docs = (await c.get("/api/collections/reports/documents")).json()["documents"]
        assert [d["filename"] for d in docs] == ["flood report.pdf"]

        # Only the collection: its page is the source, cited by file name and page.
        events = await _ask(c, collections=["reports"], web=False)
        assert events[-1][0] == "done", events[-1]
        sources = dict(events)["sources"]
        assert sources["provider"] == "collections"
        assert sources["sources"][0]["title"] == "flood report.pdf, p. 2"
        assert sources["sources"][0]["url"] == f"/api/documents/{doc['id']}#page=2"
        assert all(s["url"].startswith("/api/documents/") for s in sources["sources"])
        answer = "".join(d["text"] for n, d in events if n == "delta")
        assert "[citation:1]" in answer and "stone bridges" in answer

        # With the web (here the fixed results of the provider chain) as well.
        mixed = dict(await _ask(c, collections=["reports"]))["sources"]["sources"]
        urls = [s["url"] for s in mixed]
        assert any(u.startswith("https://en.wikipedia.org/") for u in urls)
        assert any(u.startswith(f"/api/documents/{doc['id']}#page=") for u in urls)
        # Without collections nothing of them is used.
        plain = dict(await _ask(c))["sources"]["sources"]
        assert not any(s["url"].startswith("/api/") for s in plain)

        original = await c.get(f"/api/documents/{doc['id']}")
        assert original.status_code == 200 and original.content == pdf_file(PAGES)
        assert original.headers["content-type"] == "application/pdf"
        assert original.headers["x-content-type-options"] == "nosniff"
        # the browser's PDF viewer shows it (it refuses sandboxed documents); it never
        # runs as a page of this origin
        assert "content-security-policy" not in original.headers
        assert original.headers["content-disposition"].startswith(
            'inline; filename="flood report.pdf"')

        assert (await c.delete(f"/api/documents/{doc['id']}")).json() == {
            "deleted": doc["id"]}
        assert (await c.get(f"/api/documents/{doc['id']}")).status_code == 404
        gone = await _ask(c, collections=["reports"], web=False)
        assert dict(gone)["sources"]["sources"] == []
        assert dict(gone)["done"]["finish_reason"] in ("no_relevant_sources", "no_results")
        assert _files(tmp_path) == []

        r = await _upload(c, "notes.md", b"# Bridges\n\nThree stone bridges.\n")
        assert r.status_code == 201
        assert (await c.delete("/api/collections/reports")).json() == {
            "deleted": "reports", "documents": 1}
        assert (await c.get("/api/collections")).json() == {"collections": []}
        missing = await c.get("/api/collections/reports/documents")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == \
            "not_found_error"
        assert not any((tmp_path / "collections").iterdir())
    store.close()


async def test_html_is_never_served_as_a_page(tmp_path: Path) -> None:
    app, store, _ = _app(tmp_path)
    html = b"<html><body><h1>Bridges</h1><p>Three stone bridges.</p>" \
           b"<script>alert(document.cookie)</script></body></html>"
    async with _client(app) as c:
        doc = (await _upload(c, "page.pdf", html)).json()  # named .pdf, it is HTML
        assert doc["kind"] == "html"
        r = await c.get(f"/api/documents/{doc['id']}")
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["content-disposition"].startswith("attachment;")
        assert "sandbox" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        sources = dict(await _ask(c, collections=["reports"], web=False))["sources"]
        assert sources["sources"][0]["title"] == "page.pdf, \u00a7 Bridges"
        assert sources["sources"][0]["url"].endswith("#section=1")
    store.close()


@pytest.mark.parametrize("name, data, status, words", [
    ("image.pdf", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 415, "Unsupported file type"),
    ("secret.pdf", encrypted_pdf("Top secret."), 400, "encrypted"),
    ("scan.pdf", scanned_pdf(), 400, "no text layer"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj <<", 400, "broken"),
    ("bomb.docx", docx_bomb(16 * 1024 * 1024), 413, "zip bomb"),
    ("big.txt", b"word " * 20_000, 413, "upload limit"),
    ("empty.txt", b"", 400, "empty"),
])
async def test_bad_uploads_are_clear_errors_and_leave_nothing(
        tmp_path: Path, name: str, data: bytes, status: int, words: str) -> None:
    app, store, _ = _app(tmp_path, settings={"upload_max_bytes": 64 * 1024})
    async with _client(app) as c:
        r = await _upload(c, name, data)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert words in error["message"] and error["code"] == status
        assert (await c.get("/api/collections")).json() == {"collections": []}
    assert _files(tmp_path) == []
    store.close()


async def test_the_body_cap_stops_reading_a_huge_upload(tmp_path: Path) -> None:
    app, store, _ = _app(tmp_path, settings={"upload_max_bytes": 4096})
    chunks = []

    async def body() -> Any:  # chunked, no Content-Length: the cap is counted as it comes
        yield (b"--b\r\nContent-Disposition: form-data; name=\"collection\"\r\n\r\n"
               b"reports\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
               b"filename=\"x.txt\"\r\nContent-Type: text/plain\r\n\r\n")
        for _ in range(1000):
            chunks.append(1)
            yield b"a" * 16384
    async with _client(app) as c:
        r = await c.post("/api/documents", content=body(),
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and len(chunks) < 10  # stopped early, not at the end
    store.close()


async def test_limits_names_and_unknown_collections(tmp_path: Path) -> None:
    app, store, _ = _app(tmp_path, settings={"collection_max_documents": 1,
                                             "collections_per_owner": 1})
    async with _client(app) as c:
        for bad in ("", " ", "../etc", "a/b", "x" * 65, "<script>"):
            r = await _upload(c, "a.txt", b"Some text.", collection=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == "collection", bad
        assert (await _upload(c, "a.txt", b"Some text.")).status_code == 201
        full = await _upload(c, "b.txt", b"More text.")
        assert full.status_code == 400 and "limit" in full.json()["error"]["message"]
        other = await _upload(c, "b.txt", b"More text.", collection="second")
        assert other.status_code == 400 and "collections" in other.json()["error"]["message"]
        assert [x["name"] for x in (await c.get("/api/collections")).json()[
            "collections"]] == ["reports"]
        r = await c.post("/api/search", json={"query": "q", "collections": ["nope"]})
        assert r.status_code == 404 and "'nope' not found" in r.json()["error"]["message"]
        r = await c.post("/api/search", json={"query": "q", "web": False})
        assert r.status_code == 400 and r.json()["error"]["param"] == "collections"
        r = await _upload(c, "a.txt", b"text", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403  # another site's page cannot upload here
        missing_file = await c.post("/api/documents", data={"collection": "reports"})
        assert missing_file.status_code == 400
    store.close()


async def test_collections_belong_to_their_owner(tmp_path: Path) -> None:
    app, store, _ = _app(tmp_path, settings={"multi_user": True})
    users: Users = app.state.access.users
    keys = {n: users.add(n, f"{n}-password-123") for n in ("alice", "bob")}

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[name]}"}

    async with _client(app, headers=auth("alice")) as alice, \
            _client(app, headers=auth("bob")) as bob, _client(app) as stranger:
        doc = (await _upload(alice, "flood.pdf", pdf_file(PAGES))).json()
        assert (await stranger.get("/api/collections")).status_code == 401
        assert (await bob.get("/api/collections")).json() == {"collections": []}
        assert (await bob.get("/api/collections/reports/documents")).status_code == 404
        assert (await bob.get(f"/api/documents/{doc['id']}")).status_code == 404
        assert (await bob.delete(f"/api/documents/{doc['id']}")).status_code == 404
        assert (await bob.delete("/api/collections/reports")).status_code == 404
        r = await bob.post("/api/search", json={"query": QUESTION, "collections": ["reports"]})
        assert r.status_code == 404
        # Bob's own collection of the same name is another collection.
        assert (await _upload(bob, "b.txt", b"Bob's notes.")).status_code == 201
        mine = (await alice.get("/api/collections/reports/documents")).json()
        assert [d["filename"] for d in mine["documents"]] == ["flood.pdf"]
        events = await _ask(alice, collections=["reports"], web=False)
        assert dict(events)["sources"]["sources"][0]["title"].startswith("flood.pdf, p.")
        assert (await alice.get(f"/api/documents/{doc['id']}")).status_code == 200

        # A browser session must send its CSRF token with a state-changing request.
        await stranger.post("/login", data={"name": "alice",
                                            "password": "alice-password-123", "next": "/"})
        page = await stranger.get("/")
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
        assert token
        assert (await _upload(stranger, "c.txt", b"Text.")).status_code == 403
        ok = await _upload(stranger, "c.txt", b"Text.",
                           headers={"X-CSRF-Token": token.group(1)})
        assert ok.status_code == 201
    store.close()


async def test_a_failure_after_indexing_undoes_everything(tmp_path: Path) -> None:
    app, store, collections = _app(tmp_path)

    def broken(record: dict[str, Any], limit: int) -> bool:
        raise RuntimeError("the store went away")

    store.add_document = broken  # type: ignore[method-assign]
    async with _client(app) as c:
        with pytest.raises(RuntimeError, match="went away"):
            await _upload(c, "flood.pdf", pdf_file(PAGES))
        assert (await c.get("/api/collections")).json() == {"collections": []}
    assert _files(tmp_path) == [] and not any((tmp_path / "collections").iterdir())
    assert not collections._indexes  # the new collection's index was closed and removed

    del store.add_document  # an existing collection keeps what it had, and only that
    async with _client(app) as c:
        assert (await _upload(c, "notes.txt", b"Bridges of Riverton.")).status_code == 201
        [collection_id] = list(collections._indexes)
        before = collections._indexes[collection_id].counts()
        store.add_document = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await _upload(c, "flood.pdf", pdf_file(PAGES))
        assert collections._indexes[collection_id].counts() == before
        assert len(_files(tmp_path)) == 1
        docs = (await c.get("/api/collections/reports/documents")).json()["documents"]
        assert [d["filename"] for d in docs] == ["notes.txt"]
    store.close()


async def test_the_answer_model_asks_with_collections(tmp_path: Path) -> None:
    app, _, collections = _app(tmp_path)
    await collections.add("app", "reports", "rivers.pdf", pdf_file(PAGES))
    async with _client(app) as c:
        body = {"model": "search-app", "collections": ["reports"], "web": False,
                "messages": [{"role": "user", "content": QUESTION}]}
        done = await c.post("/v1/chat/completions", json=body)
        assert done.status_code == 200, done.text
        assert all("rivers.pdf" in r["title"] for r in done.json()["search_results"])
        missing = await c.post("/v1/chat/completions", json={**body, "collections": ["x"]})
        assert missing.status_code == 404 and "'x'" in missing.json()["error"]["message"]
        alone = await c.post("/v1/chat/completions", json={**body, "collections": []})
        assert alone.status_code == 400
        assert alone.json()["error"]["param"] == "collections"


async def test_a_file_missing_here_is_a_404_and_a_deleted_collection_takes_no_upload(
        tmp_path: Path) -> None:
    from search_app.collections import NotFoundError

    app, store, collections = _app(tmp_path)
    doc = await collections.add("app", "reports", "rivers.pdf", pdf_file(PAGES))
    for path in _files(tmp_path):  # as on a replica that did not take the upload
        path.unlink()
    async with _client(app) as c:
        missing = await c.get(f"/api/documents/{doc['id']}")
    assert missing.status_code == 404 and "not on this server" in missing.text
    collection_id = store.collection("app", "reports")
    assert collection_id is not None
    collections._drop(collection_id)  # deleted while an upload was on its way
    with pytest.raises(NotFoundError):
        collections._add(collection_id, "reports", "more.txt", "text", b"more",
                         [])
    assert not (tmp_path / "collections" / collection_id).exists()
