"""Small real files for upload tests, built in memory: PDFs (several pages, encrypted,
without a text layer), Word documents (python-docx) and a zip bomb dressed as one."""

from __future__ import annotations

import io
import zipfile

__all__ = ["assemble_pdf", "docx_bomb", "docx_file", "encrypted_pdf", "pdf_file", "scanned_pdf"]


def pdf_file(pages: list[str], title: str = "Report") -> bytes:
    """A valid PDF with one page per text (Helvetica; correct xref offsets)."""
    n = len(pages)
    font = 3 + 2 * n
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
            b" ".join(b"%d 0 R" % (3 + 2 * i) for i in range(n)), n)]
    for i, text in enumerate(pages):
        lines = [text[j:j + 80] for j in range(0, len(text), 80)] or [""]
        ops = " ".join(f"({line}) Tj 0 -14 Td" for line in lines)
        stream = f"BT /F1 11 Tf 72 740 Td {ops} ET".encode("latin-1")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       b"/Contents %d 0 R /Resources << /Font << /F1 %d 0 R >> >> >>"
                       % (4 + 2 * i, font))
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(b"<< /Title (%s) >>" % title.encode("latin-1"))
    return assemble_pdf(objects)


def assemble_pdf(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (numbered from 1: the catalog first, the document
    information last), with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, len(objects), xref)
    return bytes(out)


def scanned_pdf() -> bytes:
    """Pages without a text layer (what a scan without OCR looks like to a parser)."""
    return pdf_file(["", ""])


def encrypted_pdf(text: str, password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_file([text]))))
    writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_file(parts: list[tuple[str | None, str]]) -> bytes:
    """A Word document: (heading or None, paragraph) pairs, in order."""
    import docx

    document = docx.Document()
    for heading, text in parts:
        if heading:
            document.add_heading(heading, level=1)
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_bomb(uncompressed: int = 300 * 1024 * 1024) -> bytes:
    """A zip with word/document.xml (so it sniffs as DOCX) and one member that
    unpacks to ``uncompressed`` bytes of zeros from a few hundred kilobytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
        with archive.open("word/media/zeros.bin", "w", force_zip64=True) as member:
            block = b"\0" * (1024 * 1024)
            for _ in range(uncompressed // len(block)):
                member.write(block)
    return out.getvalue()
