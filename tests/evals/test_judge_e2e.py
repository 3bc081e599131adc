"""The independent judge, end to end: stored answers re-judged sentence by sentence by a
real model on our own ``serve-model`` (llama.cpp, SmolLM2 here; the published results
use Qwen2.5-Coder-1.5B), then crossed with the app's own verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from click.testing import CliRunner

from evals.runner import QuestionResult, RunConfig, read_config, read_results, write_config
from search_app.cli import cli
from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.server import ServerProcess

pytestmark = [needs_llama_cpp]

PASSAGE = "gc.pruneExpire: objects older than this are pruned; defaults to 2 weeks ago."


def test_rescore_with_a_real_judge_keeps_each_verdict(tmp_path: Path,
                                                      llama_server: ServerProcess) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "How long are loose objects kept?",
                                "answers": ["2 weeks"]}) + "\n")
    run_dir = tmp_path / "runs" / "r"
    write_config(run_dir, RunConfig(run_id="r", dataset=str(data), questions=1))
    result = QuestionResult(
        id="a", question="How long are loose objects kept?", finish_reason="stop",
        answer="Loose objects are pruned after 2 weeks.[citation:1] "
               "Git was written in 1850 by Ada Lovelace.[citation:1]",
        sources=[{"number": 1, "url": "https://git-scm.com/docs/git-gc",
                  "passage": PASSAGE}],
        grade="CORRECT", app_support_threshold=0.55,
        app_support=[{"sentence": "Loose objects are pruned after 2 weeks.[citation:1]",
                      "cited": [1], "supported": True, "score": 0.8, "withheld": False},
                     {"sentence": "Git was written in 1850 by Ada Lovelace.[citation:1]",
                      "cited": [1], "supported": False, "score": 0.1,
                      "withheld": False}])
    (run_dir / "results.jsonl").write_text(result.model_dump_json() + "\n")
    model = httpx.get(f"{llama_server.url}/v1/models",
                      headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"][0]["id"]
    judge = ["--support", "judge", "--judge-url", f"{llama_server.url}/v1",
             "--judge-model", model, "--root", str(tmp_path)]
    runner = CliRunner()
    out = runner.invoke(cli, ["eval", "rescore", "r", *judge, "--judge-api-key", API_KEY])
    assert out.exit_code == 0, out.output
    [rescored] = read_results(run_dir / "results.jsonl")
    assert [j["sentence"] for j in rescored.judged] == [
        "Loose objects are pruned after 2 weeks.", "Git was written in 1850 by Ada Lovelace."]
    assert all(isinstance(j["supported"], bool) for j in rescored.judged)
    assert rescored.metrics["sentences_supported"] == sum(
        j["supported"] for j in rescored.judged) / 2
    assert rescored.grade == "CORRECT"  # the answer's grade is kept, not asked again
    assert read_config(run_dir).support_check == f"judge ({model})"
    out = runner.invoke(cli, ["eval", "agreement", "r", "--root", str(tmp_path)])
    assert out.exit_code == 0 and "2 sentences with both verdicts." in out.output
    assert f"App check vs judge ({model})" in out.output
    # a judge that refuses the key: one line, and the stored run is left as it was
    out = runner.invoke(cli, ["eval", "rescore", "r", *judge, "--judge-api-key", "wrong"])
    assert out.exit_code == 1 and "does not answer: HTTP 401 Unauthorized" in out.output
    assert len(out.output.strip().splitlines()) == 1
    assert read_results(run_dir / "results.jsonl")[0].judged == rescored.judged
