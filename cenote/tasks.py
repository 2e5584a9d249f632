"""Pooling tasks, declared once: what each takes, how it is named, which model serves it.

A *model task* (``--task``: embed, classify, reward; score and auto resolve to one of
them) says what a loaded model is. A *pooling task* (encode, embed, classify, score)
is what one request asks of it; each model task serves a few pooling tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ``--task`` values; score and auto resolve to one of the convertible tasks at load.
MODEL_TASKS = ("auto", "embed", "classify", "score", "reward")
# What a checkpoint can be converted into (vLLM's ``convert``).
CONVERTIBLE_TASKS = ("embed", "classify", "reward")


@dataclass(frozen=True)
class PoolingTask:
    """One pooling task."""

    name: str
    # How messages name its API ("Embedding API is not supported by this model...").
    api: str
    # The ``--task`` a model needs to serve it.
    model_task: str
    # The ``PoolingParams`` fields a request for it may set; anything else is refused.
    parameters: frozenset[str]
    # The pooler's defaults before any model or user configuration.
    defaults: dict[str, Any] = field(default_factory=dict)
    # Whether it needs one vector per input (CLS, MEAN or LAST pooling).
    one_row: bool = True
    # What a too-long input was for, in its error message (as vLLM's server words it).
    operation: str = "embedding generation"


# How any task's inputs may be cut (or padded) to length.
_TRUNCATION = frozenset({"truncate_prompt_tokens", "truncation_side", "padding"})
_ALL_PARAMETERS = _TRUNCATION | {"dimensions", "normalize", "activation", "step_tag_id",
                                 "returned_token_ids"}

POOLING_TASKS: dict[str, PoolingTask] = {task.name: task for task in (
    PoolingTask("encode", "Pooling API", "reward", _ALL_PARAMETERS,
                defaults={"normalize": False, "activation": False}, one_row=False),
    PoolingTask("embed", "Embedding API", "embed",
                _TRUNCATION | {"dimensions", "normalize"},
                defaults={"normalize": True}),
    PoolingTask("classify", "Classification API", "classify",
                _TRUNCATION | {"activation"},
                defaults={"activation": True}, operation="classification"),
    PoolingTask("score", "Score API", "score",
                _TRUNCATION | {"activation"},
                defaults={"activation": True}, operation="score"),
    # vLLM 0.21+'s token-level tasks: one normalised vector per token (after the
    # model's per-token projection, e.g. ColBERT's), and the per-token head's outputs.
    # Late chunking (a vector per chunk of tokens) and ColBERT's query/document reading.
    PoolingTask("token_embed", "Token Embedding API", "embed",
                _TRUNCATION | {"normalize", "late_chunking_params", "embedding_mode"},
                defaults={"normalize": True}, one_row=False),
    PoolingTask("token_classify", "Token Classification API", "reward",
                _TRUNCATION | {"activation"}, defaults={"activation": False}, one_row=False),
    # A sparse vector over the vocabulary (SPLADE, BGE-M3's lexical weights).
    PoolingTask("embed_sparse", "Sparse Embedding API", "embed", _TRUNCATION, one_row=False),
)}

# The pooling task a model task is loaded for: its ``override_pooler_config`` applies
# there, and its warm-up runs it.
OWN_POOLING_TASK = {"embed": "embed", "classify": "classify", "reward": "encode"}


def pooling_task(name: str) -> PoolingTask:
    """The task called ``name``; ``ValueError`` naming the tasks for any other name."""
    task = POOLING_TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise ValueError(f"Unknown pooling task {name!r}; the pooling tasks are "
                         f"{', '.join(POOLING_TASKS)}.")
    return task


def supported_pooling_tasks(model_task: str, num_labels: int, *, dense: bool = True,
                            multi_vector: bool = False, sparse: str | None = None,
                            token_head: bool = False) -> tuple[str, ...]:
    """The pooling tasks a model serves: by its task (score: cross-encoders with one
    label; embedding models score through their vectors), and by the outputs it has
    (``dense``: one vector per input; ``multi_vector``: late-interaction vectors;
    ``sparse``: "splade" or "lexical" sparse vectors; ``token_head``: a per-token head,
    as reward models have)."""
    if model_task == "classify":  # token_classify: the classifier on every token (vLLM)
        tasks = ("encode", "classify", "token_classify")
        return (*tasks, "score") if num_labels == 1 else tasks
    if model_task != "embed":
        return ("encode", "token_classify") if token_head else ("encode",)
    tasks = ["encode"]
    if dense:
        tasks.append("embed")
    if dense or multi_vector:
        tasks.append("token_embed")
    if sparse is not None:
        tasks.append("embed_sparse")
    if sparse == "lexical" or token_head:
        tasks.append("token_classify")  # BGE-M3's weight per token, a masked-LM head
    return tuple(tasks)
