"""``search-app eval``: run, report, compare; build and serve the docs corpus; list sets.

Errors a user can cause (an unknown dataset, no Debian mirror, an app that does not
start, a run that does not exist) end in one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from evals.corpus import DEFAULT_ROOT, PACKAGES, CorpusError, CorpusServer, build_corpus
from evals.datasets import DATASETS, DEFAULT_CORPUS, DatasetError, dataset_label, load_dataset

__all__ = ["eval_group"]


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def _run_dir(root: Path, run: str) -> Path:
    """A run by id (under ROOT/runs) or by its folder."""
    path = Path(run)
    if (path / "run.json").is_file():
        return path
    if (root / "runs" / run / "run.json").is_file():
        return root / "runs" / run
    raise _fail(f"no run {run!r} (neither a run folder nor an id under {root / 'runs'})")


_root = click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT,
                     show_default=True, envvar="SEARCH_APP_EVAL_ROOT",
                     help="Where .debs, corpora, downloaded datasets and runs live.")


def _support_options(command: Any) -> Any:
    """--support and the judge's --judge-url/--judge-model/--judge-api-key."""
    for option in reversed([
        click.option("--support", type=click.Choice(["embedding", "judge", "none"]),
                     default="embedding", show_default=True,
                     help="Support check of the citation metrics (judge needs "
                          "--judge-url)."),
        click.option("--judge-url", envvar="SEARCH_APP_EVAL_JUDGE_URL",
                     help="OpenAI-compatible base URL (…/v1) of the judge model."),
        click.option("--judge-model", envvar="SEARCH_APP_EVAL_JUDGE_MODEL",
                     help="Its model id."),
        click.option("--judge-api-key", envvar="SEARCH_APP_EVAL_JUDGE_API_KEY")]):
        command = option(command)
    return command


@click.group("eval")
def eval_group() -> None:
    """Evaluation harness: measure retrieval, answers, citations, abstention, latency."""


@eval_group.command("datasets")
def datasets_command() -> None:
    """List the named datasets (any JSONL file works too)."""
    for name, (about, _) in DATASETS.items():
        corpus = ",".join(DEFAULT_CORPUS.get(name, [])) or "(--base-url of an app)"
        click.echo(f"{name:18} {about}  [corpus: {corpus}]")


@eval_group.command("corpus")
@click.option("--packages", default="git", show_default=True,
              help=f"Comma-separated docs packages: {', '.join(PACKAGES)}.")
@click.option("--strip-questions", is_flag=True,
              help="Leave FAQ question headings out of the index (answers found by text).")
@click.option("--pages", help="Regex on page paths: index only a slice of the packages.")
@click.option("--serve", is_flag=True, help="Then serve the pages on 127.0.0.1 under their "
              "public URLs until interrupted.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: a bar on a terminal, a line per tenth in logs.")
@_root
def corpus_command(packages: str, strip_questions: bool, pages: str | None, serve: bool,
                   port: int, progress: bool, root: Path) -> None:
    """Download, unpack and index Debian documentation packages (cached)."""
    from search_app.retrieval_cli import progress_reporter

    names = [p.strip() for p in packages.split(",") if p.strip()]
    try:
        with progress_reporter(progress) as step:
            data_dir = build_corpus(names, strip_questions=strip_questions, pages=pages,
                                    root=root, progress=step)
        click.echo(f"index: {data_dir}  (serve it: search-app serve --data-dir {data_dir})")
        if serve:
            server = CorpusServer([PACKAGES[n] for n in names], root, port=port)
            click.echo(f"serving on {server.url}: GET {server.url}/<public URL>, or with "
                       "the page's Host header")
            server.serve_forever()
    except CorpusError as exc:
        raise _fail(str(exc)) from None


@eval_group.command("run")
@click.option("--dataset", required=True, help="A named dataset or a JSONL file.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N questions.")
@click.option("--sample", type=click.IntRange(min=1), help="Only N questions, evenly "
              "spaced over the set (the same N every time: a fixed, spread subset).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--base-url", help="A running app; without it the harness starts one over "
              "the dataset's docs corpus and stops it after.")
@click.option("--api-key", envvar="SEARCH_APP_EVAL_API_KEY", help="Bearer key of the app.")
@click.option("--run-id", help="Name of the run; an existing run is resumed (questions "
              "already answered are skipped, failed ones asked again). Default: "
              "DATASET-TIMESTAMP.")
@click.option("--corpus", "corpus", help="Docs packages to index and serve when starting "
              "the app (default: the dataset's own, e.g. git for dev).")
@click.option("--strip-questions", is_flag=True, help="Use the corpus variant without the "
              "FAQ question headings.")
@click.option("--pages", help="Regex on page paths: a slice of the corpus (see corpus).")
@click.option("--serve-arg", "serve_args", multiple=True,
              help="Extra flag for the started app, repeatable: --serve-arg=--engine=vllm")
@click.option("--provider", help="Search provider per question (default: the app's).")
@click.option("--sources", type=click.IntRange(1, 20), help="Search results per question.")
@click.option("--related/--no-related", default=False, show_default=True,
              help="Also generate related questions (slower; scored as related_ge2: the "
                   "share of answers with at least two).")
@click.option("--mode", type=click.Choice(["quick", "research"]), default="quick",
              show_default=True, help="The app's answer mode: quick (one search, one "
              "answer) or research (planned sub-questions, a sectioned report).")
@click.option("--lead/--no-lead", default=None,
              help="Ask for answers with or without the lead quote (default: the app's "
                   "setting); lead_hit scores the quote against the gold sentences.")
@click.option("--index-recall/--no-index-recall", default=None,
              help="Also score the local index's own top 10 (GET /searxng/search): "
              "retrieval without the relevance gate. Default: on when the harness starts "
              "the app (local provider), off with --base-url.")
@click.option("--retrieval-only", is_flag=True,
              help="No model: score the local index's own top 10 per question (in this "
              "process over the docs corpus, or GET /searxng/search of --base-url). For "
              "large question sets.")
@_support_options
@click.option("--progress/--no-progress", default=True, show_default=True)
@_root
def run_command(dataset: str, limit: int | None, sample: int | None, concurrency: int,
                base_url: str | None,
                api_key: str | None, run_id: str | None, corpus: str | None,
                strip_questions: bool, pages: str | None, serve_args: tuple[str, ...],
                provider: str | None, sources: int | None, related: bool, mode: str,
                lead: bool | None, index_recall: bool | None, retrieval_only: bool,
                support: str,
                judge_url: str | None, judge_model: str | None, judge_api_key: str | None,
                progress: bool, root: Path) -> None:
    """Answer a dataset through the API, score each answer, then write the report."""
    from evals.report import markdown, write_report
    from evals.runner import AppStartError, RunConfig, read_results, write_config

    try:
        questions = load_dataset(dataset, root)
    except (DatasetError, CorpusError) as exc:
        raise _fail(str(exc)) from None
    if limit:
        questions = questions[:limit]
    if sample and sample < len(questions):
        questions = [questions[i * len(questions) // sample] for i in range(sample)]
    _judge_complete(support, judge_url, judge_model)
    label = dataset_label(dataset)
    run_id = run_id or f"{label}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    if not re.fullmatch(r"[\w.@+-]+", run_id):
        raise _fail(f"invalid run id {run_id!r}: letters, digits and ._@+- only")
    run_dir = root / "runs" / run_id
    results_path = run_dir / "results.jsonl"
    done = {r.id for r in read_results(results_path) if r.error is None}  # retry errors
    todo = [q for q in questions if q.id not in done]
    names = ([p.strip() for p in corpus.split(",") if p.strip()] if corpus
             else DEFAULT_CORPUS.get(label, []))
    if base_url is None and not names:
        raise _fail(f"dataset {label!r} has no docs corpus: pass --corpus PACKAGES or "
                    "--base-url of an app (a web provider, or its own index)")
    if done:
        click.echo(f"resuming {run_id}: {len(done)} done, {len(todo)} to go", err=True)
    if base_url is not None:
        _reachable(f"{base_url.rstrip('/')}/health", "the app")
        base_url = base_url.rstrip("/")
    judge_client, scorer = _scorer(support, judge_url, judge_model, judge_api_key, related)
    config = RunConfig(run_id=run_id, dataset=dataset, questions=len(questions),
                       base_url=base_url, started_app=base_url is None,
                       corpus=names if base_url is None else [],
                       corpus_variant=("stripped" if strip_questions else "full")
                       + (f", pages {pages}" if pages else ""),
                       serve_args=list(serve_args), provider=provider, sources=sources,
                       related=related, mode=mode, lead=lead, concurrency=concurrency,
                       index_recall=(base_url is None if index_recall is None
                                     else index_recall) or retrieval_only,
                       retrieval_only=retrieval_only,
                       support_check=scorer.support.name if scorer.support else "none",
                       judge=judge_model)
    try:
        if retrieval_only:
            _retrieve(base_url, config, todo, results_path, scorer, names, strip_questions,
                      pages, root, progress)
        elif base_url is not None:
            _run(base_url, config, todo, results_path, scorer, api_key, progress)
        elif todo:
            from evals.runner import started_app
            from search_app.retrieval_cli import progress_reporter

            with progress_reporter(progress) as step:
                data_dir = build_corpus(names, strip_questions=strip_questions,
                                        pages=pages, root=root, progress=step)
            click.echo(f"starting the app over {data_dir} ...", err=True)
            with started_app(data_dir, serve_args=serve_args,
                             log_path=run_dir / "app.log") as url:
                config.base_url = url
                _run(url, config, todo, results_path, scorer, api_key, progress)
        elif not (run_dir / "run.json").is_file():
            write_config(run_dir, config)
    except (CorpusError, AppStartError) as exc:
        raise _fail(str(exc)) from None
    except httpx.HTTPError as exc:  # the judge failed mid-run; answers so far are kept
        raise _fail(f"the judge failed: {exc} (rerun with --run-id {run_id} to "
                    "resume)") from None
    finally:
        if judge_client is not None:
            judge_client.close()
    if not read_results(results_path):
        raise _fail("no question was answered")
    summary = write_report(run_dir)
    click.echo(markdown(summary))
    click.echo(f"report: {run_dir / 'report.html'}", err=True)
    if summary["answered"] == 0:
        raise _fail(f"every question failed: {summary['errors']}")


def _why(exc: httpx.HTTPError) -> str:
    """One line: httpx's status errors add a second line (a link to MDN)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _reachable(url: str, what: str) -> None:
    try:
        httpx.get(url, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise _fail(f"{what} at {url} does not answer: {_why(exc)}") from None


def _judge_complete(support: str, judge_url: str | None, judge_model: str | None) -> None:
    if (support == "judge" or judge_model) and not (judge_url and judge_model):
        raise _fail("the judge needs both --judge-url and --judge-model")


def _scorer(support: str, judge_url: str | None, judge_model: str | None,
            judge_api_key: str | None, related: bool = False) -> tuple[Any, Any]:
    from evals.judges import EmbeddingSupport, JudgeClient, JudgeSupport
    from evals.runner import Scorer

    client = (JudgeClient(judge_url, judge_model, judge_api_key)
              if judge_url and judge_model else None)
    if client is not None:
        try:
            client.check()
        except httpx.HTTPError as exc:
            raise _fail(f"the judge at {judge_url} does not answer: {_why(exc)}") from None
    check: Any = None
    if support == "embedding":
        check = EmbeddingSupport()
    elif support == "judge" and client is not None:
        check = JudgeSupport(client)
    return client, Scorer(check, client, related=related)


def _run(url: str, config: Any, todo: list[Any], results_path: Path, scorer: Any,
         api_key: str | None, progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from evals.runner import answer_questions, served_models, write_config

    config.models = served_models(url, api_key)
    previous = results_path.parent / "run.json"
    if previous.is_file():  # a resumed run keeps its first settings, noting the new URL
        old = json.loads(previous.read_text())
        old.update(base_url=url, models=config.models or old.get("models", []))
        config = config.model_validate(old)
    write_config(results_path.parent, config)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), disable=not progress,
                  transient=False) as bar:
        task = bar.add_task(config.run_id, total=len(todo))
        asyncio.run(answer_questions(
            url, todo, results_path, scorer, concurrency=config.concurrency,
            api_key=api_key, provider=config.provider, sources=config.sources,
            related=config.related, mode=config.mode, lead=config.lead,
            index_recall=config.index_recall,
            on_done=lambda r: bar.advance(task)))


def _retrieve(base_url: str | None, config: Any, todo: list[Any], results_path: Path,
              scorer: Any, names: list[str], strip_questions: bool, pages: str | None,
              root: Path, progress: bool) -> None:
    """``--retrieval-only``: no app, no model (or only an app's /searxng/search)."""
    from evals.runner import retrieve_questions, write_config
    from search_app.retrieval_cli import progress_reporter

    write_config(results_path.parent, config)
    if base_url is not None:
        http = httpx.Client(base_url=base_url, timeout=60)

        def search(q: str) -> list[str]:
            response = http.get("/searxng/search", params={"q": q, "format": "json"})
            response.raise_for_status()
            return [str(r["url"]) for r in response.json()["results"]]
    else:
        with progress_reporter(progress) as step:
            data_dir = build_corpus(names, strip_questions=strip_questions, pages=pages,
                                    root=root, progress=step)
        gate, threshold, index = _gate(data_dir)

        def search(q: str) -> list[str]:
            return [r.url for r in index.search(q, 10)]
    with progress_reporter(progress) as step:
        retrieve_questions(search, todo, results_path, scorer,
                           gate=gate if base_url is None else None,
                           gate_threshold=threshold if base_url is None else None,
                           on_done=(lambda r: step("retrieving", 1, len(todo)))
                           if step is not None else None)


def _gate(data_dir: Path) -> tuple[Any, float, Any]:
    """The app's relevance gate over this index, built the way the app builds it: its
    pipeline's search and rank, and the threshold calibrated on this index."""
    from retrieval.index import LocalIndex, load_model
    from retrieval.providers import FallbackSearch, LocalProvider
    from retrieval.ranking import Ranker
    from search_app.calibration import calibrate_relevance
    from search_app.grounding import Grounder
    from search_app.pipeline import AnswerPipeline

    model = load_model(data_dir)
    index = LocalIndex(data_dir, model)
    index.load()
    pipeline = AnswerPipeline(
        engine=lambda: None,  # type: ignore[arg-type,return-value] - never asked here
        chains={"local": FallbackSearch([LocalProvider(index.asearch)])},
        default_provider="local", ranker=Ranker(model), grounder=Grounder(model))
    threshold, _ = asyncio.run(calibrate_relevance(pipeline.best_dense_score))

    def gate(question: str) -> float | None:
        return asyncio.run(pipeline.best_dense_score(question))

    return gate, threshold, index


@eval_group.command("coverage")
@click.option("--dataset", required=True, help="A named dataset or a JSONL file.")
@click.option("--index", "index", type=click.Path(path_type=Path), default=Path("data/index"),
              show_default=True, help="The app's local index (folder or index.sqlite).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Write the questions with at least --min-share of their gold pages "
              "indexed, best covered first, as JSONL (for eval run --dataset FILE).")
@click.option("--min-share", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@_root
def coverage_command(dataset: str, index: Path, out: Path | None, min_share: float,
                     root: Path) -> None:
    """How many of a dataset's gold pages an app's local index holds (page level)."""
    from evals.coverage import coverage, index_urls, most_covered
    from evals.datasets import write_jsonl

    try:
        questions = load_dataset(dataset, root)
        indexed = index_urls(index)
    except (DatasetError, CorpusError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    cov = coverage(questions, indexed)
    click.echo(cov.summary())
    if out is not None:
        kept = most_covered(questions, cov, min_share=min_share)
        write_jsonl(out, kept)
        click.echo(f"{len(kept)} questions with >= {min_share:g} of their gold pages "
                   f"indexed: {out}", err=True)


@eval_group.command("rescore")
@click.argument("run")
@click.option("--dataset", help="The questions (default: the run's own dataset).")
@_support_options
@_root
def rescore_command(run: str, dataset: str | None, support: str, judge_url: str | None,
                    judge_model: str | None, judge_api_key: str | None, root: Path) -> None:
    """Recompute a run's per-question metrics from its stored answers (after a metric or
    a dataset's mapping changed, or with another support check: ``--support judge``),
    then rewrite its report. Asks no app; the answers' grades are kept."""
    from evals.report import markdown, write_report
    from evals.runner import read_config, read_results, write_config

    run_dir = _run_dir(root, run)
    config = read_config(run_dir)
    try:
        questions = {q.id: q for q in load_dataset(dataset or config.dataset, root)}
    except (DatasetError, CorpusError) as exc:
        raise _fail(str(exc)) from None
    _judge_complete(support, judge_url, judge_model)
    client, scorer = _scorer(support, judge_url, judge_model, judge_api_key, config.related)
    scorer.judge = None  # grade answers again only in a new run: keep the stored grades
    results = read_results(run_dir / "results.jsonl")
    missing = [r.id for r in results if r.id not in questions]
    if missing:
        raise _fail(f"{len(missing)} answers of {run_dir.name} are not in the dataset "
                    f"(first: {missing[0]!r})")
    for result in results:
        scorer.score(questions[result.id], result)
    config.support_check = scorer.support.name if scorer.support else "none"
    if client is not None:
        client.close()
    path = run_dir / "results.jsonl"
    temporary = path.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(r.model_dump_json() + "\n" for r in results),
                         encoding="utf-8")
    temporary.replace(path)
    write_config(run_dir, config)
    click.echo(markdown(write_report(run_dir)))


@eval_group.command("agreement")
@click.argument("runs", nargs=-1, required=True)
@_root
def agreement_command(runs: tuple[str, ...], root: Path) -> None:
    """The app's own support check against the run's judge, sentence by sentence (runs
    made with --support judge; a mark run has both verdicts for every sentence). Several
    runs are added up."""
    from evals.agreement import agreement, agreement_markdown, pooled
    from evals.runner import read_config, read_results

    found = []
    for run in runs:
        results = read_results(_run_dir(root, run) / "results.jsonl")
        if not any(r.judged for r in results):
            raise _fail(f"{run} has no per-sentence verdicts: run it with --support "
                        "(judge) on this version of the harness, or rescore it")
        threshold = next((r.app_support_threshold for r in results
                          if r.app_support_threshold is not None), None)
        found.append(agreement(results, threshold))
    judge = read_config(_run_dir(root, runs[0])).support_check
    click.echo(agreement_markdown(" + ".join(runs), pooled(found), judge))


@eval_group.command("report")
@click.argument("run")
@_root
def report_command(run: str, root: Path) -> None:
    """(Re)write a run's report.md, report.html and summary.json; print the Markdown."""
    from evals.report import markdown, write_report

    run_dir = _run_dir(root, run)
    summary = write_report(run_dir)
    click.echo(markdown(summary))
    click.echo(f"report: {run_dir / 'report.html'}", err=True)


@eval_group.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for compare.md/.html/.json (default: RUN_B's folder).")
@_root
def compare_command(run_a: str, run_b: str, out: Path | None, root: Path) -> None:
    """Metrics of two runs side by side, with the change from A to B."""
    from evals.report import compare_runs

    a, b = _run_dir(root, run_a), _run_dir(root, run_b)
    target = out or b / f"compare-{a.name}"
    click.echo(compare_runs(a, b, target))
    click.echo(f"report: {target / 'compare.html'}", err=True)


SHIPPED_PAIRS = Path(__file__).resolve().parent / "datasets" / "support_pairs.jsonl"


@eval_group.group("pairs")
def pairs_group() -> None:
    """Support pairs labelled by careful reading, and the support check scored on them."""


@pairs_group.command("extract")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="JSONL of unlabelled pairs (labels are added by a reader).")
@_root
def pairs_extract_command(runs: tuple[str, ...], out: Path, root: Path) -> None:
    """Every sentence of RUNS' answers with the passages it was checked against."""
    from evals.pairs import pairs_from_run, write_pairs

    pairs = [p for run in runs for p in pairs_from_run(_run_dir(root, run))]
    write_pairs(out, pairs)
    click.echo(f"{len(pairs)} pairs -> {out}")


@pairs_group.command("score")
@click.option("--pairs", "path", type=click.Path(path_type=Path, exists=True,
                                                 dir_okay=False),
              default=SHIPPED_PAIRS, show_default=True, help="Labelled pairs (JSONL).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
              show_default=True, help="Where the embedding model's cache lives.")
def pairs_score_command(path: Path, data_dir: Path) -> None:
    """Precision and recall of "shown as supported" for the check's variants."""
    from evals.pairs import VARIANTS, markdown, read_pairs, score_variants
    from retrieval.index import load_model

    pairs = read_pairs(path)
    if not any(p.label for p in pairs):
        raise _fail(f"{path} has no labelled pair")
    click.echo(markdown(score_variants(pairs, load_model(data_dir), VARIANTS)))
