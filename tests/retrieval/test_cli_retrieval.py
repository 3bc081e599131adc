"""``search-app index`` / ``search-app search`` through click, with the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from search_app.retrieval_cli import index_command, search_command

PAGES = {
    "tides.html": "<html><head><title>Tides</title></head><body><p>Tides are the rise and "
                  "fall of sea levels caused by the Moon's gravity.</p></body></html>",
    "bees.md": "# Honey bees\n\nBees turn flower nectar into honey inside the hive.\n",
    "compilers.txt": "A compiler translates source code into machine code.\n",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    for name, text in PAGES.items():
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / name).write_text(text)
    result = CliRunner().invoke(index_command, [str(root / "docs"), "--data-dir",
                                                str(root / "data"), "--json", "--device",
                                                "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["paths"]
    assert (report["added"], report["documents"]) == (3, 3)
    return root


def test_search_json(built: Path) -> None:
    result = CliRunner().invoke(search_command, ["why does the sea level go up and down",
                                                 "--data-dir", str(built / "data"),
                                                 "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["query"] == "why does the sea level go up and down"
    assert len(out["passages"]) == 2
    first = out["passages"][0]
    assert first["title"] == "Tides" and first["source_id"] == 1
    assert first["url"].startswith("file://") and first["url"].endswith("tides.html")
    assert set(first["scores"]) >= {"dense", "bm25", "fused"}


def test_search_table_and_reindex(built: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(search_command, ["nectar", "--data-dir", str(built / "data")])
    assert table.exit_code == 0 and "Honey bees" in table.output
    again = runner.invoke(index_command, [str(built / "docs"), "--data-dir",
                                          str(built / "data"), "--no-progress"])
    assert again.exit_code == 0
    assert "0 added, 0 updated, 3 unchanged, 0 removed" in again.output


def test_errors_are_readable(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(search_command, ["x", "--data-dir", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "search-app index" in empty.output
    usage = runner.invoke(index_command, ["--data-dir", str(tmp_path)])
    assert usage.exit_code == 2 and "--default-corpus" in usage.output
    missing = runner.invoke(index_command, [str(tmp_path / "nope"), "--data-dir",
                                            str(tmp_path)])
    assert missing.exit_code == 1 and "no such file" in missing.output
