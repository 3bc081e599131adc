"""Support checks for the citation metrics, and the SimpleQA-style LLM judge.

Two support checks answer "does this evidence support this sentence?":

- ``embedding`` (default, runs in CI): the app's own grounding check
  (:meth:`search_app.grounding.Grounder.check`): MiniLM cosine between the sentence and
  the evidence (whole passages and their sentences) >= 0.8, and no number or
  capitalised name in the sentence that the evidence (or the question) lacks. Cheap and
  deterministic, but a screen, not entailment: it catches invented names and numbers and
  off-topic sentences, not a false claim made of the evidence's own words. Scoring the
  app with its own check also means that check's blind spots are the metric's.
- ``judge``: any OpenAI-compatible model asked for YES/NO entailment (ALCE uses a T5
  NLI model; a judge model is the offline substitute). Slower; independent of the app.

The answer judge grades a predicted answer CORRECT / INCORRECT / NOT_ATTEMPTED against
the gold answer with the rules of OpenAI's SimpleQA grader (simple-evals), condensed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from retrieval.types import Passage

__all__ = ["EmbeddingSupport", "JudgeClient", "JudgeSupport", "SIMPLEQA_GRADER"]


class EmbeddingSupport:
    """The app's grounding check, reused (see the module docstring)."""

    def __init__(self, model: object | None = None, threshold: float | None = None) -> None:
        from retrieval.embeddings import SentenceTransformerModel
        from search_app.grounding import SUPPORT_THRESHOLD, Grounder

        self.grounder = Grounder(model or SentenceTransformerModel(),  # type: ignore[arg-type]
                                 support_threshold=threshold or SUPPORT_THRESHOLD)
        self.name = f"embedding (MiniLM cosine >= {self.grounder.support_threshold:g} " \
                    f"+ novel-term rule)"

    def supports(self, evidence: Sequence[str], sentence: str, question: str = "") -> bool:
        """Blocking; call from a worker thread (it runs the async check in its own loop)."""
        passages = [Passage(text=t, url="", title="", source_id=i, position=0)
                    for i, t in enumerate(evidence, 1) if t.strip()]
        if not passages:
            return False
        _, checked = asyncio.run(self.grounder.check(sentence, passages, question,
                                                     len(passages)))
        return checked.supported


@dataclass
class JudgeClient:
    """A chat model on an OpenAI-compatible server (``…/v1``), temperature 0."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    transport: httpx.BaseTransport | None = None  # tests

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.base_url.rstrip("/"), headers=headers,
                                  timeout=self.timeout_s, transport=self.transport)

    def complete(self, prompt: str, max_tokens: int = 8) -> str:
        response = self._http.post("/chat/completions", json={
            "model": self.model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}]})
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"] or "")

    def check(self) -> None:
        """Fail early (``httpx.HTTPError``) when the judge's server cannot be reached."""
        self._http.get("/models").raise_for_status()

    def grade(self, question: str, gold: str, predicted: str) -> str:
        """CORRECT, INCORRECT or NOT_ATTEMPTED (SimpleQA's letters A, B, C)."""
        reply = self.complete(SIMPLEQA_GRADER.format(question=question, target=gold,
                                                     predicted_answer=predicted))
        match = re.search(r"\b([ABC])\b", reply.upper())
        letter = match.group(1) if match else "C"
        return {"A": "CORRECT", "B": "INCORRECT", "C": "NOT_ATTEMPTED"}[letter]

    def close(self) -> None:
        self._http.close()


class JudgeSupport:
    """Entailment by a judge model: YES/NO (anything else counts as NO)."""

    def __init__(self, client: JudgeClient) -> None:
        self.client = client
        self.name = f"judge ({client.model})"

    def supports(self, evidence: Sequence[str], sentence: str, question: str = "") -> bool:
        premise = "\n\n".join(t for t in evidence if t.strip())[:6000]
        if not premise:
            return False
        reply = self.client.complete(SUPPORT_PROMPT.format(premise=premise, claim=sentence),
                                     max_tokens=3)
        return reply.strip().upper().startswith("YES")


SUPPORT_PROMPT = """Premise:
{premise}

Claim: {claim}

Is the claim fully supported by the premise? Answer with one word: YES or NO."""

# Condensed from OpenAI simple-evals' GRADER_TEMPLATE (same grades and rules).
SIMPLEQA_GRADER = """Your job is to look at a question, a gold target, and a predicted \
answer, and then assign a grade of either ["CORRECT", "INCORRECT", "NOT_ATTEMPTED"].

- CORRECT: the predicted answer fully contains the important information of the gold \
target and contains no information that contradicts it. Hedging is fine as long as the \
gold target is given and nothing contradicts it. Capitalization, punctuation, grammar \
and order do not matter; numbers must be correct to the last significant figure of the \
gold target; a middle name or extra detail that does not contradict is fine.
- INCORRECT: any statement in the answer contradicts the gold target (even if hedged, \
e.g. "I think it is X but maybe Y" where X is wrong), or it gives several candidate \
answers.
- NOT_ATTEMPTED: the important information of the gold target is not in the answer and \
nothing contradicts it (e.g. "I don't know", "the sources do not say", or unrelated \
text).

Question: {question}
Gold target: {target}
Predicted answer: {predicted_answer}

Grade the predicted answer as one of:
A: CORRECT
B: INCORRECT
C: NOT_ATTEMPTED

Just return the letter "A", "B", or "C", with no text around it."""
