"""The two synthesis prompts of the Qwen3-Embedding paper (arXiv 2506.05176), in one place.

Stage 1 (configuration) asks the LLM to choose, for one passage, a Character from candidate
personas, a Question_Type and a Difficulty. Stage 2 (query generation) asks it to write the query
from that Character's point of view with a required type, difficulty, length and language.

The skeletons below are the paper's templates, word for word. The paper does not publish its
one-line option descriptions or its few-shot examples: the ones here were written for this
project (``tests/test_synth.py`` checks the skeletons byte for byte).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Stage 1's question types, with this project's one-line descriptions.
QUESTION_TYPES: dict[str, str] = {
    "keywords": "a few key terms that someone would type into a search box to find the Passage",
    "acquire_knowledge": "a question asking for a fact, definition or explanation the Passage "
    "gives",
    "summary": "a request for the main points or an overview of the Passage",
    "yes_or_no": "a question that the Passage answers with yes or no",
    "background": "a question about the context, causes or history behind what the Passage "
    "describes",
}

#: Stage 1's difficulty levels, with this project's one-line descriptions.
DIFFICULTIES: dict[str, str] = {
    "high_school": "answerable with general knowledge and a plain reading of the Passage",
    "university": "needs the subject knowledge of an undergraduate course",
    "phd": "needs specialist expertise and careful reasoning about the Passage's details",
}

#: The JSON keys the LLM must return.
CONFIGURATION_KEYS = ("Character", "Question_Type", "Difficulty")
QUERY_KEY = "Query"

#: The query instruction for persona retrieval: the passage is embedded as a query with it, the
#: personas as documents.
PERSONA_INSTRUCTION = "Given a passage, retrieve the people most likely to ask questions about it"

_CONFIGURATION_EXAMPLES = (
    (
        "Rotating an API key without downtime takes two keys: create the new key, deploy it to "
        "every client, confirm that no request still uses the old key, then revoke the old one.",
        [
            "site reliability engineer",
            "mobile app developer",
            "security auditor",
            "technical writer",
            "product manager",
        ],
        '{"Character": "site reliability engineer", "Question_Type": "acquire_knowledge", '
        '"Difficulty": "university"}',
    ),
    (
        "Tomato plants need deep watering about once a week; shallow daily watering keeps the "
        "roots near the surface and makes the plants less tolerant of dry spells.",
        [
            "home gardener",
            "soil scientist",
            "restaurant owner",
            "landscape architect",
            "secondary school biology teacher",
        ],
        '{"Character": "home gardener", "Question_Type": "yes_or_no", "Difficulty": "high_school"}',
    ),
    (
        "The 1918 influenza pandemic spread in three waves; the second, in the autumn of 1918, "
        "was by far the deadliest, and troop movements at the end of the First World War helped "
        "carry the virus across continents.",
        [
            "epidemiologist",
            "history student",
            "public health official",
            "novelist",
            "museum curator",
        ],
        '{"Character": "epidemiologist", "Question_Type": "background", "Difficulty": "phd"}',
    ),
)

_QUERY_EXAMPLE = (
    "site reliability engineer",
    _CONFIGURATION_EXAMPLES[0][0],
    ("acquire_knowledge", "university", 12, "English"),
    '{"Query": "what steps let me replace an API key without breaking running clients?"}',
)


def format_characters(characters: Sequence[str]) -> str:
    """The candidate personas as the prompt lists them: one per line, each after ``- ``."""
    return "\n".join(f"- {c}" for c in characters)


def _configuration_examples() -> str:
    blocks = []
    for number, (passage, characters, output) in enumerate(_CONFIGURATION_EXAMPLES, start=1):
        blocks.append(
            f"<Example{number}>\n**Passage**:\n{passage}\n**Character**:\n"
            f"{format_characters(characters)}\n**output**:\n{output}\n</Example{number}>"
        )
    return "\n".join(blocks)


def _query_example() -> str:
    character, passage, (kind, difficulty, length, language), output = _QUERY_EXAMPLE
    return (
        f"**Character**\n{character}\n**Passage**\n{passage}\n**Requirement**\n"
        f"{_requirement(kind, difficulty, length, language)}\n**output**:\n{output}"
    )


def _options(values: dict[str, str]) -> str:
    return "\n".join(f"- {name}: {text}" for name, text in values.items())


def _requirement(kind: str, difficulty: str, length: int, language: str) -> str:
    return (
        f"- Type: {kind};\n"
        f"- Difficulty: {difficulty};\n"
        f"- Length: the length of the generated sentences should be {length} words;\n"
        f"- Language: the language in which the results are generated should be {language} "
        "language;"
    )


def configuration_prompt(passage: str, characters: Sequence[str], corpus_language: str) -> str:
    """Stage 1: choose a Character, a Question_Type and a Difficulty for ``passage``.

    Args:
        passage: The passage's text.
        characters: The candidate personas (the paper retrieves the top 5 for the passage).
        corpus_language: The passage's language, as a name ("English", "Chinese").
    """
    return (
        "Given a **Passage** and **Character**, select the appropriate option from three "
        "fields: Character, Question_Type, Difficulty, and return the output in JSON format.\n"
        "First, select the Character who are likely to be interested in the Passage from the "
        "candidates. Then select the Question_Type that the Character might ask about the "
        "Passage; Finally, choose the Difficulty of the possible question based on the Passage, "
        "the Character, and the Question_Type.\n"
        "Character: Given by input **Character**\n"
        f"Question_Type:\n{_options(QUESTION_TYPES)}\n"
        f"Difficulty:\n{_options(DIFFICULTIES)}\n"
        f"Here are some examples\n{_configuration_examples()}\n"
        "Now, generate the **output** based on the **Passage** and **Character** from user, the "
        f"**Passage** will be in {corpus_language} language and the **Character** will be in "
        "English.\n"
        "Ensure to generate only the JSON output with content in English.\n"
        f"**Passage**:\n{passage}\n"
        f"**Character**:\n{format_characters(characters)}"
    )


def query_prompt(
    character: str,
    passage: str,
    question_type: str,
    difficulty: str,
    length: int,
    language: str,
    corpus_language: str,
) -> str:
    """Stage 2: write a query from ``character``'s point of view that retrieves ``passage``.

    Args:
        character: The persona chosen in stage 1.
        passage: The passage's text.
        question_type: One of :data:`QUESTION_TYPES`.
        difficulty: One of :data:`DIFFICULTIES`.
        length: The query's length in words.
        language: The query's language, as a name ("English").
        corpus_language: The passage's language, as a name.
    """
    return (
        "Given a **Character**, **Passage**, and **Requirement**, generate a query from the "
        "**Character**'s perspective that satisfies the **Requirement** and can be used to "
        "retrieve the **Passage**. Please return the result in JSON format.\n"
        f"Here is an example:\n{_query_example()}\n"
        "Now, generate the **output** based on the **Character**, **Passage** and "
        "**Requirement** from user, the **Passage** will be in "
        f"{corpus_language} language, the **Character** and **Requirement** will be in "
        "English.\n"
        "Ensure to generate only the JSON output, with the key in English and the value in "
        f"{language} language.\n"
        f"**Character**\n{character}\n"
        f"**Passage**\n{passage}\n"
        f"**Requirement**\n{_requirement(question_type, difficulty, length, language)}"
    )


def configuration_examples_text() -> str:
    """Stage 1's few-shot examples as the prompt shows them (the paper's ``<Example1>``...)."""
    return _configuration_examples()


def query_example_text() -> str:
    """Stage 2's example as the prompt shows it (where the paper has ``<example>``)."""
    return _query_example()
