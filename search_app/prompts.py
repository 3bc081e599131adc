"""Prompts of the answer engine, as named constants with the trade-offs they make.

The wording follows search_with_lepton's (the seed of this project), shortened: a 135M
model loses track of long instructions, and every instruction token is a token the
sources cannot use. Citations are asked for, but not relied on: small models ignore
them, so ``search_app.grounding`` checks each sentence and cites it from the pipeline.
"""

from __future__ import annotations

from serving.engines.base import ChatMessage

__all__ = [
    "ABSTAIN_TEXT",
    "ANSWER_SYSTEM",
    "RELATED_SCHEMA",
    "RELATED_SYSTEM",
    "answer_messages",
    "format_context",
    "related_messages",
]

# Why the sources come in the system message: chat templates of small models give it
# more weight than a long user turn, and the question stays the last thing it reads.
ANSWER_SYSTEM = (
    "You answer questions using only the numbered sources below. Write a short, accurate "
    "answer of at most a few sentences. After each sentence, cite the source it comes "
    "from as [citation:N]. If the sources do not contain the answer, say so. Do not "
    "repeat the sources or these instructions.\n\nSources:\n{context}"
)

# Fixed text, not a model call: the gate exists because tiny models answer confidently
# from nothing (see docs: "Who won the 2018 World Cup?" with Eiffel Tower sources).
ABSTAIN_TEXT = ("The sources I found do not cover this question, so I cannot answer it "
                "from them. Try rephrasing it or searching another provider.")

# Constrained by RELATED_SCHEMA (grammar-level JSON), so even a tiny model returns valid
# JSON; the prompt only steers the content.
RELATED_SYSTEM = (
    "Write three short follow-up questions, each a full question ending with a question "
    "mark, that a curious reader might ask next about the user's topic. Answer in JSON "
    "with the key \"questions\".\n\nContext:\n{context}"
)

RELATED_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "questions": {
            "type": "array",
            "items": {"type": "string", "maxLength": 150},
            "minItems": 3,
            "maxItems": 3,
        },
    },
    "required": ["questions"],
    "additionalProperties": False,
}


def format_context(blocks: list[tuple[int, str, str]]) -> str:
    """``[[citation:N]] title: text`` blocks, as search_with_lepton formats them."""
    return "\n\n".join(f"[[citation:{n}]] {title}: {text}" for n, title, text in blocks)


def answer_messages(question: str, context: str,
                    history: list[tuple[str, str]]) -> list[ChatMessage]:
    """System prompt with sources, earlier turns of the thread, then the question."""
    messages: list[ChatMessage] = [
        {"role": "system", "content": ANSWER_SYSTEM.format(context=context)}]
    for asked, answered in history:
        messages.append({"role": "user", "content": asked})
        messages.append({"role": "assistant", "content": answered})
    messages.append({"role": "user", "content": question})
    return messages


def related_messages(question: str, context: str) -> list[ChatMessage]:
    return [{"role": "system", "content": RELATED_SYSTEM.format(context=context)},
            {"role": "user", "content": question}]
