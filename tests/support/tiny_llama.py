"""Build a tiny random-weight Llama model folder, offline, for contract tests.

Why: the vLLM engine (and the OpenAI server benchmarks) must be exercised against a real
model folder, but nothing may be downloaded here. A 2-layer Llama with a 1,024-token
byte-level BPE tokenizer trained on text generated in this file is about 2 MB, starts in
vLLM in well under a minute on CPU, and has everything the serving layer relies on: BOS
and EOS tokens, a ChatML-like chat template, a ``generation_config.json``.

Its outputs are gibberish (random weights). Tests must assert on the contract (finish
reasons, token counts, stop strings, cancellation), never on the text.

Shape choices: vLLM's CPU attention rejects ``head_dim`` 16, so 2 heads of 64 (hidden
128) with one KV head (grouped-query attention, like real Llamas).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "CHAT_TEMPLATE",
    "TINY_LLAMA_VERSION",
    "build_tiny_llama",
    "default_cache_dir",
    "tiny_llama_path",
]

# Bump when anything below changes, so that cached folders are rebuilt.
TINY_LLAMA_VERSION = 1
_MARKER = "tiny-llama-build.json"

BOS, EOS, PAD = "<s>", "<|im_end|>", "<pad>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START]

# ChatML-like; the turn terminator doubles as EOS, as in real ChatML models.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCAB_SIZE = 1024
SEED = 1234


def default_cache_dir() -> Path:
    """Where test artifacts are cached: ``$SEARCH_APP_TEST_CACHE`` or a fixed /tmp folder.

    A fixed default (rather than pytest's tmp_path) lets repeated runs, and the benchmark
    scripts, reuse the same model folder.
    """
    return Path(os.environ.get("SEARCH_APP_TEST_CACHE") or "/tmp/search-app-test-cache")


def tiny_llama_path() -> Path:
    """The tiny Llama in the default cache dir, built on first use."""
    return build_tiny_llama(default_cache_dir() / f"tiny-llama-v{TINY_LLAMA_VERSION}")


def _builtin_docstrings() -> list[str]:
    """Docstrings of Python's builtins: about 60 kB of real English, always installed.

    (They differ slightly between Python versions, so the tokenizer is reproducible for
    one interpreter version; the cached folder is reused regardless.)
    """
    import builtins
    import inspect

    docs: list[str] = []
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        doc = inspect.getdoc(obj)
        if doc:
            docs.append(doc)
        if isinstance(obj, type):
            for member in sorted(vars(obj)):
                mdoc = inspect.getdoc(getattr(obj, member, None))
                if mdoc and mdoc != doc:
                    docs.append(mdoc)
    return list(dict.fromkeys(docs))


def _training_text() -> list[str]:
    """English text with no files and no network: generated sentences plus docstrings.

    Sentences combined from word lists, a few fixed paragraphs for punctuation, digits,
    JSON and code, and the builtins' docstrings so that BPE fills all 1,024 entries.
    """
    paragraphs = [
        ("The quick brown fox jumps over the lazy dog. A search engine reads many pages, "
         "ranks the passages that answer the question, and writes a short answer that "
         "cites its sources [1] [2]."),
        ("Hello! How are you today? I am fine, thank you. What is the capital of France? "
         "Paris is the capital of France, and Berlin is the capital of Germany."),
        ("Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 1,000. JSON: {\"key\": "
         "\"value\", \"list\": [1, 2, 3], \"ok\": true, \"none\": null}."),
        ("def main():\n    print('hello world')\n    return 0\n\nif __name__ == '__main__':\n"
         "    main()\n"),
    ]
    subjects = ["the model", "a user", "the server", "this page", "our team", "the city",
                "every student", "the library", "a scientist", "the river", "my friend",
                "the computer", "each engine", "the teacher", "a small bird", "the market"]
    verbs = ["answers", "reads", "writes", "finds", "builds", "explains", "follows",
             "measures", "describes", "remembers", "connects", "compares", "creates",
             "improves", "collects", "returns"]
    objects = ["the question", "a long document", "several results", "the history of art",
               "new ideas", "the weather report", "an old story", "the source code",
               "many numbers", "the mountain road", "a famous painting", "the final score",
               "important facts", "the music festival", "a simple table", "the green garden"]
    endings = ["quickly.", "with care.", "every morning.", "before noon.", "in the evening.",
               "without errors.", "for everyone.", "as expected.", "again and again.",
               "in French and English.", "during the winter.", "near the station."]
    sentences = []
    for i, s in enumerate(subjects):
        for j, v in enumerate(verbs):
            o = objects[(i * 7 + j * 3) % len(objects)]
            e = endings[(i + j) % len(endings)]
            sentences.append(f"{s.capitalize()} {v} {o} {e}")
    return paragraphs * 4 + sentences + _builtin_docstrings()


def _train_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    if len(tokenizer) > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, more than {VOCAB_SIZE}")
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)

    # Older readers (and some vLLM code paths) look for ``torch_dtype``; transformers 5
    # writes ``dtype``. Write both so the folder means the same thing to every reader.
    config_path = dest / "config.json"
    data = json.loads(config_path.read_text())
    data["torch_dtype"] = "float32"
    data["dtype"] = "float32"
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    # Make sure the chat template is in tokenizer_config.json (transformers 5 may write
    # it to a separate chat_template.jinja; some readers only look at the JSON).
    tc_path = dest / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    (dest / _MARKER).write_text(json.dumps({"version": TINY_LLAMA_VERSION}) + "\n")


def _is_built(dest: Path) -> bool:
    try:
        return json.loads((dest / _MARKER).read_text()).get("version") == TINY_LLAMA_VERSION
    except (OSError, ValueError):
        return False


def build_tiny_llama(dest: Path) -> Path:
    """Create the model folder at ``dest`` unless a complete build is already there.

    Built in a sibling temporary folder and renamed into place, so a crash or a second
    process building at the same time never leaves a half-written model behind. Seeded:
    the weights and the tokenizer are the same on every build.
    """
    dest = Path(dest)
    if _is_built(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a server under another user must read it
    try:
        _build(tmp)
        if dest.exists():
            if _is_built(dest):  # another process won the race
                return dest
            shutil.rmtree(dest)  # stale or partial build
        try:
            tmp.rename(dest)
        except OSError:
            if not _is_built(dest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
