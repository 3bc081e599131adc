"""Regenerates ``dev.jsonl``: the gitfaq questions plus questions written for this
project (short answers checked against the git-doc 2.39 pages, and three questions
whose answers are not in the git docs, for abstention).

    python -m evals.datasets.make_dev
"""

from __future__ import annotations

from pathlib import Path

from evals.datasets import Question, faq_questions, write_jsonl

G = "https://git-scm.com/docs/"
REFLOG = G + "git-reflog#_options_for_code_expire_code"
GC = G + "git-gc#_configuration"

OWN: list[tuple[str, str, list[str], list[str]]] = [
    ("own-reflog-expire",
     "How long does git reflog expire keep reflog entries by default?",
     ["90 days"], [REFLOG, GC]),
    ("own-reflog-unreachable",
     "After how many days does git expire unreachable reflog entries by default?",
     ["30 days"], [REFLOG, GC]),
    ("own-prune-expire",
     "What grace period does git gc give to loose unreachable objects before pruning them?",
     ["2 weeks", "2.weeks.ago", "two weeks"], [GC]),
    ("own-rerere-resolved",
     "How many days are records of resolved merge conflicts kept when git rerere gc runs?",
     ["60 days"], [GC]),
    ("own-rerere-unresolved",
     "How many days does git rerere gc keep records of unresolved merge conflicts?",
     ["15 days"], [GC]),
    ("own-bisect-skip-code",
     "Which exit code should a git bisect run script use when the current commit cannot "
     "be tested?", ["125"], [G + "git-bisect#_bisect_run"]),
    ("own-stash-latest", "What is the name of the latest stash entry?",
     ["stash@{0}"], [G + "git-stash#_commands"]),
    ("own-gitignore-doublestar",
     'In a gitignore pattern, what does a leading "**" followed by a slash mean?',
     ["match in all directories"], [G + "gitignore#_pattern_format"]),
    ("own-worktree-lock",
     "How do I keep a worktree on a removable drive from being pruned automatically?",
     ["git worktree lock", "lock it"], [G + "git-worktree#_commands"]),
]

UNANSWERABLE = [
    ("own-none-worldcup", "Which country won the 2018 FIFA World Cup?"),
    ("own-none-ethanol", "At what temperature does ethanol boil at sea level?"),
    ("own-none-canberra", "What is the capital city of Australia?"),
]


def main() -> None:
    # Own questions first, so that `--limit 20` (the CI smoke run) has every kind.
    questions = [Question(id=i, question=t, answers=a, gold_urls=u, tags=["own", "short"])
                 for i, t, a, u in OWN]
    questions += [Question(id=i, question=t, tags=["own", "unanswerable"])
                  for i, t in UNANSWERABLE]
    faq = faq_questions("git", prefix="gitfaq")
    for q in faq:
        q.tags = ["faq", "gitfaq"]
    questions += faq
    write_jsonl(Path(__file__).with_name("dev.jsonl"), questions)
    print(len(questions))


if __name__ == "__main__":
    main()
