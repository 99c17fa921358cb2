"""Synthetic queries per the Qwen3-Embedding paper: persona-driven, with a similarity filter.

From passages (a folder, a JSON-lines file or a Chroma collection) to training rows for
``qwen3-rag finetune`` and a BEIR folder for ``qwen3-rag eval``::

    from qwen3_rag import Qwen3Embedder
    from qwen3_rag.synth import OpenAIChatLLM, SynthOptions, passages_from_folder, synthesize

    passages, _ = passages_from_folder(["./docs"])
    llm = OpenAIChatLLM("http://localhost:8000/v1", "Qwen/Qwen3-32B")
    summary = synthesize(passages, llm, Qwen3Embedder(), "synth-out", options=SynthOptions())

The LLM may also be any callable ``prompt -> reply`` or a :class:`LocalCausalLM`.
"""

from qwen3_rag.synth.corpus import (
    Passage,
    passages_from_collection,
    passages_from_folder,
    passages_from_jsonl,
)
from qwen3_rag.synth.llm import (
    CallableLLM,
    ChatLLM,
    LLMError,
    LLMRequestError,
    LocalCausalLM,
    OpenAIChatLLM,
    ReplyCache,
)
from qwen3_rag.synth.parsing import Configuration, InvalidReply, extract_json
from qwen3_rag.synth.personas import Embedder, PersonaRetriever, load_personas
from qwen3_rag.synth.pipeline import (
    SynthesisStopped,
    SyntheticQuery,
    SynthOptions,
    SynthSummary,
    generate,
    split_by_passage,
    synthesize,
    write_dataset,
)

__all__ = [
    "CallableLLM",
    "ChatLLM",
    "Configuration",
    "Embedder",
    "InvalidReply",
    "LLMError",
    "LLMRequestError",
    "LocalCausalLM",
    "OpenAIChatLLM",
    "Passage",
    "PersonaRetriever",
    "ReplyCache",
    "SynthOptions",
    "SynthSummary",
    "SynthesisStopped",
    "SyntheticQuery",
    "extract_json",
    "generate",
    "load_personas",
    "passages_from_collection",
    "passages_from_folder",
    "passages_from_jsonl",
    "split_by_passage",
    "synthesize",
    "write_dataset",
]
