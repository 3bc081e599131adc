"""Uploaded files: the type comes from the bytes, every parser runs behind a limit, and
each refusal says why (retrieval/uploads.py). Real small files, built in the test."""

from __future__ import annotations

import pytest

from retrieval.uploads import ExtractLimits, UploadRejected, extract_sections, sniff_upload
from tests.support.documents import (
    docx_bomb,
    docx_file,
    encrypted_pdf,
    pdf_file,
    scanned_pdf,
)


def _rejected(data: bytes, filename: str = "", limits: ExtractLimits | None = None
              ) -> UploadRejected:
    with pytest.raises(UploadRejected) as caught:
        extract_sections(data, sniff_upload(data, filename), limits)
    assert caught.value.message
    return caught.value


def test_pdf_is_one_section_per_page_with_its_page_number() -> None:
    data = pdf_file(["The Alpha river rises in the northern hills.", "",
                     "Three stone bridges cross the Alpha at Riverton."])
    assert sniff_upload(data, "notes.txt") == "pdf"  # the bytes decide, not the name
    sections = extract_sections(data, "pdf")
    assert [(s.anchor, s.title("r.pdf")) for s in sections] == [
        ("page=1", "r.pdf, p. 1"), ("page=3", "r.pdf, p. 3")]  # the blank page is skipped
    assert "stone bridges" in sections[1].text


def test_markdown_and_html_split_at_their_headings() -> None:
    markdown = b"Intro text.\n\n# Install\n\nRun pip install.\n\n## Usage\n\nCall it daily.\n"
    assert sniff_upload(markdown, "guide.md") == "markdown"
    sections = extract_sections(markdown, "markdown")
    assert [s.title("guide.md") for s in sections] == [
        "guide.md, start", "guide.md, \u00a7 Install", "guide.md, \u00a7 Usage"]
    assert "Run pip install." in sections[1].text

    html = (b"<!DOCTYPE html><html><head><title>T</title><script>alert(1)</script></head>"
            b"<body><h1>Alpha</h1><p>First part.</p><h2>Beta</h2><p>Second part.</p>"
            b"</body></html>")
    assert sniff_upload(html, "report.pdf") == "html"  # a .pdf that is HTML is HTML
    sections = extract_sections(html, "html")
    assert [s.label for s in sections] == ["\u00a7 Alpha", "\u00a7 Beta"]
    assert "alert" not in " ".join(s.text for s in sections)


def test_plain_text_without_headings_is_one_section_cited_by_name() -> None:
    data = "Caf\u00e9 opening hours are nine to five.\n".encode()
    assert sniff_upload(data, "hours.txt") == "text"
    [section] = extract_sections(data, "text")
    assert section.anchor == "" and section.title("hours.txt") == "hours.txt"


def test_docx_sections_follow_its_headings() -> None:
    data = docx_file([(None, "Preface text."), ("Setup", "Install with pip."),
                      ("Usage", "Run the tool daily.")])
    assert sniff_upload(data, "manual.pdf") == "docx"
    sections = extract_sections(data, "docx")
    assert [s.label for s in sections] == ["start", "\u00a7 Setup", "\u00a7 Usage"]
    assert "Install with pip." in sections[1].text


@pytest.mark.parametrize("data, kind, words", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "unsupported", "Unsupported file type"),
    (b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff", "unsupported", "Unsupported file type"),
    ("caf\u00e9".encode("latin-1") * 20, "unsupported", "UTF-8"),
    (b"", "empty", "empty"),
    (b"   \n\n  ", "empty", "no text"),
    (b"%PDF-1.4\n1 0 obj garbage", "invalid", "broken"),
    (b"PK\x03\x04 not really a zip", "invalid", "broken zip"),
])
def test_bad_files_are_refused_with_a_reason(data: bytes, kind: str, words: str) -> None:
    rejected = _rejected(data)
    assert rejected.kind == kind and words in rejected.message


def test_a_zip_that_is_not_a_word_document_is_unsupported() -> None:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    rejected = _rejected(out.getvalue(), "sheet.docx")
    assert rejected.kind == "unsupported" and "not a Word document" in rejected.message


def test_encrypted_and_scanned_pdfs_say_what_to_do() -> None:
    rejected = _rejected(encrypted_pdf("Top secret plans."))
    assert rejected.kind == "encrypted" and "password" in rejected.message
    rejected = _rejected(scanned_pdf())
    assert rejected.kind == "empty" and "no text layer" in rejected.message


def test_zip_bombs_are_refused_from_the_directory_before_unpacking() -> None:
    bomb = docx_bomb(16 * 1024 * 1024)  # 16 MiB of zeros in ~16 KiB
    assert len(bomb) < 100_000 and sniff_upload(bomb) == "docx"
    by_ratio = _rejected(bomb)  # under the total cap, over the ratio cap
    assert by_ratio.kind == "too_large" and "zip bomb" in by_ratio.message
    by_total = _rejected(bomb, limits=ExtractLimits(zip_max_total=8 * 1024 * 1024,
                                                    zip_max_ratio=1e9))
    assert "unpacks to" in by_total.message


def test_page_and_text_caps() -> None:
    data = pdf_file(["one", "two", "three"])
    assert _rejected(data, limits=ExtractLimits(max_pdf_pages=2)).kind == "too_large"
    text = b"word " * 1000
    assert _rejected(text, limits=ExtractLimits(max_text_chars=100)).kind == "too_large"
