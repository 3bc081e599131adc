"""The relevance gate's threshold, calibrated to the local index it guards.

Why: the gate (``search_app/grounding.py``) abstains when the best passage's MiniLM
cosine to the question is below a threshold. 0.52 was tuned on the default index of
Wikipedia summaries, where an unrelated question still finds a loosely related article
(off-topic questions scored up to ~0.65 there). A narrow index (one project's docs) is
different: unrelated questions score far lower (SimpleQA against the git docs: max
0.365, median 0.19), and so do good retrievals of answers written in other words (FAQ
answers without their question headings), which 0.52 threw away.

So the threshold is set from what *unrelated* questions score in this index: a fixed
bundle of everyday questions on topics a documentation set does not cover is searched
and ranked exactly as a user's question would be, and the threshold sits a margin above
the 90th percentile of their best scores, never above the Wikipedia-tuned 0.52 (a broad
index keeps it) and never below a floor. Measured per index at start-up (about 1-2 s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from search_app.grounding import RELEVANCE_THRESHOLD

__all__ = ["CALIBRATION_MARGIN", "CALIBRATION_QUESTIONS", "RELEVANCE_FLOOR",
           "calibrate_relevance"]

CALIBRATION_MARGIN = 0.08
RELEVANCE_FLOOR = 0.30
CALIBRATION_PERCENTILE = 90

# Everyday questions across many topics: unrelated to almost any single documentation
# set; a broad encyclopedia index relates to many of them, which keeps its threshold at
# the default.
CALIBRATION_QUESTIONS: tuple[str, ...] = (
    "What did I eat for breakfast yesterday?", "Will it rain in Lisbon tomorrow?",
    "Who won the football World Cup in 2018?", "How do I bake sourdough bread?",
    "What is the capital of Australia?", "How tall is Mount Kilimanjaro?",
    "Who painted the Mona Lisa?", "What is my WiFi password?",
    "How many calories are in a banana?", "When did the Roman Empire fall?",
    "What is the best way to learn to play the guitar?", "Who is the mayor of Toronto?",
    "How do vaccines train the immune system?", "What year did the Titanic sink?",
    "How do I change a flat tyre on a bicycle?", "What is the price of gold today?",
    "Which planet has the most moons?", "How long should I boil an egg?",
    "Who wrote the novel Pride and Prejudice?", "What causes the northern lights?",
    "How much does a flight from Paris to Tokyo cost?", "What is a good name for a cat?",
    "How many players are on a basketball team?", "Why do leaves change colour in autumn?",
    "What is the population of Brazil?", "How do I treat a sprained ankle?",
    "Who discovered penicillin?", "What time does the supermarket close on Sunday?",
    "How do bees make honey?", "Which country has the longest coastline?",
    "What is the plot of the film Casablanca?", "How do I get a stain out of a carpet?",
    "When is the next full moon?", "What language is spoken in Suriname?",
    "How fast can a cheetah run?", "Who was the first woman to win a Nobel Prize?",
    "What should I pack for a beach holiday?", "How do tides work?",
    "Which wine goes well with fish?", "What is the tallest building in the world?",
)

BestScore = Callable[[str], Awaitable[float | None]]


async def calibrate_relevance(best_score: BestScore,
                              questions: Sequence[str] = CALIBRATION_QUESTIONS
                              ) -> tuple[float, list[float]]:
    """(threshold, the bundle's best scores). ``best_score(question)`` runs the app's
    own search and ranking and returns the best passage's dense score (None: no
    passage)."""
    scores = [s for s in [await best_score(q) for q in questions] if s is not None]
    if not scores:
        return RELEVANCE_THRESHOLD, []
    high = float(np.percentile(scores, CALIBRATION_PERCENTILE))
    threshold = min(RELEVANCE_THRESHOLD, max(RELEVANCE_FLOOR, high + CALIBRATION_MARGIN))
    return round(threshold, 3), scores
