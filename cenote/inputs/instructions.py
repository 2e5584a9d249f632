"""Instructions: the prompt a Sentence-Transformers model puts before a text (e.g.
``"query: "``), picked by name (``prompt_name``, TEI's field), by Cohere's
``input_type``, or the model's default, exactly as Sentence-Transformers picks it."""

from __future__ import annotations

from cenote.config.sentence_transformers import SentenceTransformersConfig

# Cohere's input types, and the prompt names that mean each where a model has no prompt
# of the type's own name (Sentence-Transformers' encode_query/encode_document use
# "query" and "document"; E5-style models call documents "passage").
COHERE_INPUT_TYPES: dict[str, tuple[str, ...]] = {
    "search_query": ("search_query", "query"),
    "search_document": ("search_document", "document", "passage"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}


def prompt_names(st: SentenceTransformersConfig | None) -> list[str]:
    return list(st.prompts) if st is not None else []


def instruction(st: SentenceTransformersConfig | None, prompt_name: str | None) -> str | None:
    """The text to put before each input: the named prompt, else the model's default
    (None when there is none). An unknown name is a ``ValueError`` listing the names."""
    prompts = st.prompts if st is not None else {}
    if prompt_name is None:
        name = st.default_prompt_name if st is not None else None
        return prompts.get(name) or None if name is not None else None
    if not isinstance(prompt_name, str) or prompt_name not in prompts:
        names = ", ".join(repr(n) for n in prompts) or "none"
        raise ValueError(f"Unknown prompt_name {prompt_name!r}; this model's prompt names are: "
                         f"{names}.")
    return prompts[prompt_name] or None


def prompt_name_for_input_type(st: SentenceTransformersConfig | None,
                               input_type: str | None) -> str | None:
    """The model's prompt for ``input_type``: the prompt of that name (as vLLM reads it),
    else the one Cohere's type means (None where the model has none); any other type is
    refused in vLLM's words."""
    if input_type is None:
        return None
    names = prompt_names(st)
    if input_type in names:
        return input_type
    if input_type not in COHERE_INPUT_TYPES:
        supported = ", ".join(sorted({*names, *COHERE_INPUT_TYPES}))
        raise ValueError(f"Unsupported input_type {input_type!r}. Supported values: {supported}")
    return next((n for n in COHERE_INPUT_TYPES[input_type] if n in names), None)
