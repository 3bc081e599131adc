"""Aggregate a run into ``summary.json``, ``report.md`` and a self-contained
``report.html`` (plots embedded as base64 PNGs), and compare two runs.

Aggregation: every metric is the mean over the questions where it is defined (a question
without gold URLs has no recall, an unanswerable one has no F1, ...); ``n`` says how
many that was. Latency stages get p50 and p95 over the answered questions.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from evals import metrics as m
from evals.runner import QuestionResult, RunConfig, read_config, read_results

__all__ = ["METRIC_GROUPS", "compare_runs", "summarize", "write_report"]

METRIC_GROUPS: dict[str, list[str]] = {
    "retrieval": [f"recall@{k}_{lvl}" for lvl in ("page", "anchor") for k in m.RETRIEVAL_KS]
    + ["recall@all_page", "mrr_page", "mrr_anchor"]
    + [f"index_recall@{k}_{lvl}" for lvl in ("page", "anchor") for k in (5, 10)]
    + ["index_mrr_page", "index_mrr_anchor"],
    "answer": ["exact_match", "f1", "answer_contains", "answer_recall", "passage_recall"],
    "citations": ["citation_recall", "citation_precision", "sentences_supported"],
    "abstention": ["abstention", "false_abstention"],
    "lead": ["lead_hit", "quoted"],
    "extras": ["cut_off", "related_ge2", "withheld_sentences", "dangling_shown"],
}
LATENCY_STAGES = ["search_ms", "read_ms", "rank_ms", "ttft_ms", "first_text_ms",
                  "total_ms", "wall_ms"]
# The headline bars of the plots and of compare.
HEADLINE = ["recall@5_page", "recall@5_anchor", "mrr_anchor", "f1", "answer_contains",
            "passage_recall", "citation_recall", "citation_precision", "abstention",
            "false_abstention"]


def summarize(results: list[QuestionResult], config: RunConfig | None = None
              ) -> dict[str, Any]:
    """The machine-readable summary of a run."""
    metrics: dict[str, dict[str, float | int | None]] = {}
    names = [n for group in METRIC_GROUPS.values() for n in group] + ["tokens_per_s"]
    for name in names:
        values = [r.metrics.get(name) for r in results]
        defined = [v for v in values if v is not None]
        metrics[name] = {"mean": sum(defined) / len(defined) if defined else None,
                         "n": len(defined)}
    answered = [r for r in results if r.error is None]
    # Latency of generated answers only: an instant refusal (the relevance gate) would
    # pull every percentile down.
    generated = [r for r in answered if not r.metrics.get("abstained")]
    latency: dict[str, dict[str, float | None]] = {}
    for stage in LATENCY_STAGES:
        values = [(r.wall_ms if stage == "wall_ms" else r.first_text_ms
                   if stage == "first_text_ms" else r.timings.get(stage))
                  for r in generated]
        values = [v for v in values if v is not None]
        latency[stage] = {"p50": m.percentile(values, 50), "p95": m.percentile(values, 95)}
    tps = [r.metrics.get("tokens_per_s") for r in generated]
    tps = [v for v in tps if v is not None]
    latency["tokens_per_s"] = {"p50": m.percentile(tps, 50), "p95": m.percentile(tps, 95)}
    grades = [r.grade for r in results if r.grade is not None]
    finish: dict[str, int] = {}
    for r in answered:
        finish[r.finish_reason or "?"] = finish.get(r.finish_reason or "?", 0) + 1
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error["code"]] = errors.get(r.error["code"], 0) + 1
    return {
        "run": config.model_dump() if config else None,
        "questions": len(results), "answered": len(answered), "errors": errors,
        "finish_reasons": finish, "metrics": metrics, "latency": latency,
        "judge": {**m.simpleqa_scores(grades), "n": len(grades)} if grades else None,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def markdown(summary: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    run = summary.get("run") or {}
    lines = [f"# Evaluation run `{run.get('run_id', '?')}`", ""]
    if run:
        lines += [f"- dataset: `{run['dataset']}` ({summary['questions']} questions, "
                  f"{summary['answered']} answered, errors: {summary['errors'] or 'none'})",
                  f"- app: {run.get('base_url') or '?'}"
                  f"{' (started by the harness)' if run.get('started_app') else ''}; "
                  f"models: {', '.join(run.get('models') or []) or '?'}",
                  f"- corpus: {', '.join(run.get('corpus') or []) or '(as served)'} "
                  f"({run.get('corpus_variant')}); support check: {run.get('support_check')}"
                  f"; judge: {run.get('judge') or 'none'}",
                  f"- mode: {run.get('mode') or 'quick'}; finish reasons: "
                  f"{summary['finish_reasons']}; created {run['created']}",
                  ""]
    for group, names in METRIC_GROUPS.items():
        lines += [f"## {group.capitalize()}", "", "| metric | mean | n |", "|---|---|---|"]
        lines += [f"| {n} | {_fmt(summary['metrics'][n]['mean'])} | "
                  f"{summary['metrics'][n]['n']} |" for n in names]
        lines.append("")
    if summary.get("judge"):
        j = summary["judge"]
        lines += ["## LLM judge (SimpleQA grades)", "", "| grade | share |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v) if k != 'n' else v} |" for k, v in j.items()]
        lines.append("")
    lines += ["## Latency", "", "| stage | p50 | p95 |", "|---|---|---|"]
    for stage, v in summary["latency"].items():
        fmt = _fmt if stage == "tokens_per_s" else _ms
        unit = "" if stage == "tokens_per_s" else " ms"
        lines.append(f"| {stage.removesuffix('_ms')}{unit} | {fmt(v['p50'])} | "
                     f"{fmt(v['p95'])} |")
    lines.append("")
    for name, file in (plots or {}).items():
        lines += [f"![{name}]({file})", ""]
    return "\n".join(lines)


def _plots(run_dir: Path, summaries: dict[str, dict[str, Any]],
           results: dict[str, list[QuestionResult]]) -> dict[str, bytes]:
    """PNG bytes: metric bars per run, latency distributions (box plots per stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(summaries), 1)
    for i, (label, summary) in enumerate(summaries.items()):
        values = [summary["metrics"][n]["mean"] or 0.0 for n in HEADLINE]
        ax.bar([x + i * width for x in range(len(HEADLINE))], values, width, label=label)
    ax.set_xticks([x + width * (len(summaries) - 1) / 2 for x in range(len(HEADLINE))])
    ax.set_xticklabels(HEADLINE, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Metrics (mean; higher is better except false_abstention)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["metrics.png"] = _png(fig)
    stages = ["search_ms", "rank_ms", "ttft_ms", "total_ms"]
    fig, axes = plt.subplots(1, len(stages), figsize=(12, 3.5))
    for ax, stage in zip(axes, stages, strict=True):
        data = [[r.timings.get(stage) for r in rs if r.error is None
                 and r.timings.get(stage) is not None] or [0.0] for rs in results.values()]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(data) + 1))
        ax.set_xticklabels(list(results), fontsize=7, rotation=20)
        ax.set_title(stage.removesuffix("_ms") + " (ms)", fontsize=9)
    fig.tight_layout()
    out["latency.png"] = _png(fig)
    plt.close("all")
    return out


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _html(title: str, body_md: str, pngs: dict[str, bytes]) -> str:
    """A self-contained page: the Markdown's tables as HTML, the plots inline."""
    from markdown_it import MarkdownIt

    text = body_md
    for name, data in pngs.items():
        text = text.replace(f"({name})", f"(data:image/png;base64,"
                            f"{base64.b64encode(data).decode()})")
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
             "padding:0 1rem}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:.2rem .6rem;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{rendered}</body></html>\n")


def write_report(run_dir: Path) -> dict[str, Any]:
    """Write summary.json, report.md, report.html and the PNGs into ``run_dir``."""
    config = read_config(run_dir)
    results = read_results(run_dir / "results.jsonl")
    summary = summarize(results, config)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    pngs = _plots(run_dir, {config.run_id: summary}, {config.run_id: results})
    for name, data in pngs.items():
        (run_dir / name).write_bytes(data)
    text = markdown(summary, {n: n for n in pngs})
    (run_dir / "report.md").write_text(text + "\n")
    (run_dir / "report.html").write_text(_html(f"Evaluation {config.run_id}", text, pngs))
    return summary


def compare_runs(run_a: Path, run_b: Path, out_dir: Path) -> str:
    """A Markdown table of both runs' metrics and the change, plus an HTML page with
    both runs' bars; written to ``out_dir`` (compare.md, compare.html, compare.json)."""
    configs = [read_config(run_a), read_config(run_b)]
    results = [read_results(run_a / "results.jsonl"), read_results(run_b / "results.jsonl")]
    sums = [summarize(r, c) for r, c in zip(results, configs, strict=True)]
    a, b = configs[0].run_id, configs[1].run_id
    if a == b:
        b = f"{b} (B)"
    lines = [f"# Compare `{a}` (A) with `{b}` (B)", "",
             f"Datasets: A `{configs[0].dataset}` ({sums[0]['questions']} q), B "
             f"`{configs[1].dataset}` ({sums[1]['questions']} q). "
             f"{sum(1 for _ in _shared(results))} questions in both. Modes: A "
             f"{configs[0].mode}, B {configs[1].mode}.", "",
             "| metric | A | B | B − A |", "|---|---|---|---|"]
    rows: dict[str, Any] = {}
    for names in METRIC_GROUPS.values():
        for n in names:
            va, vb = sums[0]["metrics"][n]["mean"], sums[1]["metrics"][n]["mean"]
            delta = None if va is None or vb is None else vb - va
            rows[n] = {"a": va, "b": vb, "delta": delta}
            sign = "" if delta is None or delta < 0 else "+"
            lines.append(f"| {n} | {_fmt(va)} | {_fmt(vb)} | {sign}{_fmt(delta)} |")
    lines += ["", "| latency | A p50 | B p50 | A p95 | B p95 |", "|---|---|---|---|---|"]
    for stage in LATENCY_STAGES + ["tokens_per_s"]:
        la, lb = sums[0]["latency"][stage], sums[1]["latency"][stage]
        fmt = _fmt if stage == "tokens_per_s" else _ms
        lines.append(f"| {stage} | {fmt(la['p50'])} | {fmt(lb['p50'])} | "
                     f"{fmt(la['p95'])} | {fmt(lb['p95'])} |")
        rows[stage] = {"a": la, "b": lb}
    pngs = {f"compare-{name}": data for name, data in
            _plots(out_dir, {a: sums[0], b: sums[1]}, {a: results[0], b: results[1]}).items()}
    lines += ["", *[f"![{n}]({n})" for n in pngs], ""]
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(text)
    (out_dir / "compare.json").write_text(json.dumps({"a": a, "b": b, "rows": rows},
                                                     indent=2) + "\n")
    for name, data in pngs.items():
        (out_dir / name).write_bytes(data)
    (out_dir / "compare.html").write_text(_html(f"Compare {a} / {b}", text, pngs))
    return text


def _shared(results: list[list[QuestionResult]]) -> set[str]:
    return {r.id for r in results[0]} & {r.id for r in results[1]}
