"""Which model the app should run by default, by measured answers (issue 19, item 6).

For each model (the default SmolLM2 and the catalog's Qwen2.5-Coder 0.5B and 1.5B, each
pulled first with ``search-app models pull NAME``) the app is started over the default
Wikipedia index, and the same evenly spread sample of the labelled set is asked with the
lead on and with it off, one question at a time, through ``search-app eval run``
(strict grounding, the product's default). Per run: answer contains gold (what the
reader saw, the quote included), false abstention, abstention on the off-corpus
questions, the first answer text (with strict grounding: the first supported
sentence) and the whole answer, p50. Wrong details shown are read from the labelled
support pairs of the same runs (docs/evals.md, "Choosing the default model").

    python -m bench.model_choice --sample 42 [--models smollm2-135m,qwen2.5-coder-1.5b]

Writes bench/results/model_choice.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.procs import free_port, serve_process

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
LABELS = ROOT / "evals" / "datasets" / "shown_labels.jsonl"


def _run(model: str, lead: bool, sample: int, data_dir: Path, eval_root: Path) -> str:
    run_id = f"choice-{model}-{'lead' if lead else 'nolead'}-{sample}"
    port = free_port()
    command = [sys.executable, "-m", "search_app.cli", "serve", "--port", str(port),
               "--data-dir", str(data_dir),
               *([] if model == MODELS[0] else ["--model", model]),  # the default: packaged
               "--store-path", str(eval_root / "runs" / f"{run_id}.sqlite"),
               "--rate-limit-per-minute", "0", "--first-token-timeout-s", "300",
               "--answer-timeout-s", "600"]
    with serve_process(command, port=port, log_path=eval_root / "runs" / f"{run_id}.log",
                       ready_timeout=600) as server:
        deadline = time.monotonic() + 300  # /health is up before the answer engine
        while httpx.get(f"{server.url}/api/info", timeout=5).json()["state"] != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError("the answer engine did not get ready")
            time.sleep(0.5)
        subprocess.run([sys.executable, "-m", "search_app.cli", "eval", "run",
                        "--dataset", "labelled-wiki", "--sample", str(sample),
                        "--base-url", server.url, "--concurrency", "1",
                        "--lead" if lead else "--no-lead", "--support", "none",
                        "--run-id", run_id, "--root", str(eval_root), "--no-progress"],
                       check=True, cwd=ROOT)
    return run_id


def _summary(run_dir: Path) -> dict[str, object]:
    data = json.loads((run_dir / "summary.json").read_text())
    metric = {k: v["mean"] for k, v in data["metrics"].items()}
    latency = data["latency"]
    return {"answer_contains": metric.get("answer_contains"),
            "false_abstention": metric.get("false_abstention"),
            "abstention_off_corpus": metric.get("abstention"),
            "lead_hit": metric.get("lead_hit"),
            "first_text_p50_s": _s(latency.get("first_text_ms", {}).get("p50")),
            "total_p50_s": _s(latency.get("total_ms", {}).get("p50")),
            "finish_reasons": data.get("finish_reasons")}


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sample", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--eval-root", type=Path, default=ROOT / "data" / "evals")
    parser.add_argument("--leads", default="on,off")
    parser.add_argument("--labels", type=Path, default=LABELS,
                        help="Reader labels of the runs' shown sentences (id RUN:QID.N).")
    parser.add_argument("--report-only", action="store_true",
                        help="Only add the labels to the stored rows and print the table.")
    args = parser.parse_args()
    out = RESULTS / "model_choice.json"
    rows = json.loads(out.read_text()) if out.is_file() else {}
    for model in [] if args.report_only else args.models.split(","):
        for lead in (x == "on" for x in args.leads.split(",")):
            run_id = _run(model, lead, args.sample, args.data_dir, args.eval_root)
            rows[run_id] = {"model": model, "lead": lead, "sample": args.sample,
                            **_summary(args.eval_root / "runs" / run_id)}
            RESULTS.mkdir(exist_ok=True)
            out.write_text(json.dumps(rows, indent=2) + "\n")
    if args.labels.is_file():
        for run_id, row in rows.items():
            row.update(_shown(args.eval_root / "runs" / run_id, args.labels))
        out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| model | lead | answer contains gold | false abstention | first text p50 | "
          "whole answer p50 | model sentences shown (labelled wrong) | wrong detail shown, "
          "quotes counted |\n|---|---|---|---|---|---|---|---|")
    for row in rows.values():
        print(f"| {row['model']} | {'on' if row['lead'] else 'off'} | "
              f"{_f(row['answer_contains'])} | {_f(row['false_abstention'])} | "
              f"{row['first_text_p50_s']} s | {row['total_p50_s']} s | "
              f"{row.get('shown_sentences', '-')} ({row.get('shown_wrong', '-')}) | "
              f"{_f(row.get('wrong_detail_shown_with_quotes'))} |")


def _shown(run_dir: Path, labels_path: Path) -> dict[str, object]:
    """The run's shown model sentences with the readers' labels, and its quotes."""
    from evals.pairs import pairs_from_run, shown_quality
    from evals.runner import read_results

    labels = {json.loads(line)["id"]: json.loads(line)["label"]
              for line in labels_path.read_text().splitlines() if line.strip()}
    pairs = [p for p in pairs_from_run(run_dir) if p.shown]
    for p in pairs:
        p.label = labels.get(f"{run_dir.name}:{p.id}")
    quotes = sum(bool(r.quotes) for r in read_results(run_dir / "results.jsonl"))
    quality = shown_quality(pairs, quotes)
    quality["shown_wrong"] = sum(p.label not in (None, "yes") for p in pairs)
    quality["unlabelled_shown"] = sum(p.label is None for p in pairs)
    return quality


def _f(x: object) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    main()
