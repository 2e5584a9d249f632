"""Ray Data: embed, classify or score a ``ray.data.Dataset`` with a pool of engine actors.

    import ray
    from cenote.integrations.ray import embed_dataset

    ds = ray.data.read_parquet("texts/")
    ds = embed_dataset(ds, concurrency=2, num_cpus=7)  # adds an "embedding" column
    ds.write_parquet("embedded/")

Each actor loads one :class:`cenote.LLM` and runs ``LLM.embed`` (``classify``,
``score``) on each batch of rows, so every row gets what ``LLM.embed`` gives its
text in a single process. Ray Data does not keep the rows' order by default: carry
an id column to match results to inputs (or set ``preserve_order`` on the
dataset's ``DataContext``). The actors' CPUs must leave ``reserve_cpus`` of the
cluster's for Ray Data's read and write tasks, or a dataset read from files would
wait forever for one: a pool that would take them all is refused.

Nothing else in cenote imports this module; without Ray it raises an ImportError
that says ``pip install 'cenote[ray]'``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from cenote.integrations import import_ray, use_assigned_cpus
from cenote.llm import LLM
from cenote.params import PoolingParams

ray = import_ray("data")

METHODS = ("embed", "classify", "score")
_DEFAULT_OUTPUT_COLUMN = {"embed": "embedding", "classify": "probs", "score": "score"}


class LLMPredictor:
    """A callable class for ``Dataset.map_batches``: one :class:`cenote.LLM` per actor.

    ``method`` says what each batch gets: ``"embed"`` adds ``output_column``
    (default ``"embedding"``, a ``[rows, dim]`` float32 array); ``"classify"`` adds
    ``output_column`` (default ``"probs"``, ``[rows, num_labels]``) and, unless
    ``label_column`` is None, each row's most likely label name; ``"score"`` adds
    ``output_column`` (default ``"score"``, float32) for the pair of texts in
    ``text_column`` and ``text_pair_column``. The other columns pass through.

    ``model`` and ``llm_options`` (``task``, ``dtype``, ``max_model_len``, ...) are
    those of :class:`cenote.LLM`; ``pooling_params`` applies to every row. In a Ray
    actor, torch gets as many threads as the CPUs Ray assigned it::

        ds.map_batches(LLMPredictor, fn_constructor_kwargs={"model": path},
                       compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                       batch_size=256)
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        method: str = "embed",
        text_column: str = "text",
        text_pair_column: str = "text_pair",
        output_column: str | None = None,
        label_column: str | None = "label",
        pooling_params: PoolingParams | None = None,
        **llm_options: Any,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self.method = method
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.output_column = output_column or _DEFAULT_OUTPUT_COLUMN[method]
        self.label_column = label_column
        self.pooling_params = pooling_params
        use_assigned_cpus()
        self.llm = LLM(model, **llm_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = _column_texts(batch, self.text_column)
        out = dict(batch)
        if self.method == "embed":
            outputs = self.llm.embed(texts, pooling_params=self.pooling_params, use_tqdm=False)
            # The vectors' tensors, stacked: no Python float per dimension.
            out[self.output_column] = (torch.stack([o.outputs.data for o in outputs]).float()
                                       .numpy() if outputs else _matrix([]))
        elif self.method == "classify":
            outputs = self.llm.classify(texts, pooling_params=self.pooling_params,
                                        use_tqdm=False)
            probs = _matrix([o.outputs.probs for o in outputs])
            out[self.output_column] = probs
            if self.label_column is not None:
                names = self.llm.config.id2label
                out[self.label_column] = np.array(
                    [names.get(int(i), str(int(i))) for i in probs.argmax(axis=1)]
                    if len(texts) else [], dtype=object)
        else:
            pairs = _column_texts(batch, self.text_pair_column)
            outputs = (self.llm.score(texts, pairs, pooling_params=self.pooling_params,
                                      use_tqdm=False) if texts else [])
            out[self.output_column] = np.array([o.outputs.score for o in outputs],
                                               dtype=np.float32)
        return out


def _column_texts(batch: dict[str, np.ndarray], column: str) -> list[str]:
    if column not in batch:
        raise KeyError(f"The batch has no column {column!r} (it has {sorted(batch)}).")
    return batch[column].tolist()


def _matrix(rows: list[list[float]]) -> np.ndarray:
    """One float32 row per input (a 0 x 0 array for an empty batch)."""
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.array(rows, dtype=np.float32)


def embed_dataset(
    ds: ray.data.Dataset,
    model: str | os.PathLike | None = None,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    pooling_params: PoolingParams | None = None,
    concurrency: int | tuple[int, int] = 2,
    batch_size: int = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
    reserve_cpus: float = 1,
    **llm_options: Any,
) -> ray.data.Dataset:
    """``ds`` with an ``output_column`` of embeddings of ``text_column`` (float32
    ``[dim]`` per row), computed by ``concurrency`` engine actors (an int, or a
    ``(min, max)`` pair for an autoscaling pool), each with ``num_cpus`` CPUs (its
    torch threads) and ``num_gpus`` GPUs, taking ``batch_size`` rows at a time.
    ``llm_options`` go to :class:`cenote.LLM`. Lazy, as every Ray Data transform; for
    other actor options call ``ds.map_batches`` with :class:`LLMPredictor`.

    ``ValueError`` when the actors (their minimum, for a pool that scales) would leave
    fewer than ``reserve_cpus`` of the Ray cluster's CPUs to Ray Data's read and write
    tasks, which would otherwise wait forever; ``reserve_cpus=0`` turns the check off
    (a dataset already in memory, such as ``from_items``, has no read task)."""
    return _map_with_engines(
        ds, dict(model=model, method="embed", text_column=text_column,
                 output_column=output_column, pooling_params=pooling_params, **llm_options),
        concurrency, batch_size, num_cpus, num_gpus, reserve_cpus)


def classify_dataset(
    ds: ray.data.Dataset,
    model: str | os.PathLike | None = None,
    *,
    text_column: str = "text",
    output_column: str = "probs",
    label_column: str | None = "label",
    pooling_params: PoolingParams | None = None,
    concurrency: int | tuple[int, int] = 2,
    batch_size: int = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
    reserve_cpus: float = 1,
    **llm_options: Any,
) -> ray.data.Dataset:
    """``ds`` with each row's class probabilities in ``output_column`` and its most
    likely label's name in ``label_column`` (None: no label column); the other
    arguments as :func:`embed_dataset`."""
    return _map_with_engines(
        ds, dict(model=model, method="classify", text_column=text_column,
                 output_column=output_column, label_column=label_column,
                 pooling_params=pooling_params, **llm_options),
        concurrency, batch_size, num_cpus, num_gpus, reserve_cpus)


def score_dataset(
    ds: ray.data.Dataset,
    model: str | os.PathLike | None = None,
    *,
    text_column: str = "text",
    text_pair_column: str = "text_pair",
    output_column: str = "score",
    pooling_params: PoolingParams | None = None,
    concurrency: int | tuple[int, int] = 2,
    batch_size: int = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
    reserve_cpus: float = 1,
    **llm_options: Any,
) -> ray.data.Dataset:
    """``ds`` with the score of each row's pair (``text_column``, ``text_pair_column``)
    in ``output_column``, as ``LLM.score``: a cross-encoder's relevance, or the
    cosine similarity of an embedding model's two vectors; the other arguments as
    :func:`embed_dataset`."""
    return _map_with_engines(
        ds, dict(model=model, method="score", text_column=text_column,
                 text_pair_column=text_pair_column, output_column=output_column,
                 pooling_params=pooling_params, **llm_options),
        concurrency, batch_size, num_cpus, num_gpus, reserve_cpus)


def _map_with_engines(ds: ray.data.Dataset, predictor_options: dict[str, Any],
                      concurrency: int | tuple[int, int], batch_size: int, num_cpus: float,
                      num_gpus: float, reserve_cpus: float) -> ray.data.Dataset:
    pool = actor_pool(concurrency)
    check_cpus_left(pool.min_size, num_cpus, reserve_cpus)
    # A restarted actor reloads the model and its batch runs again (Ray Data's
    # default for actor pools): a lost actor costs time, never rows.
    return ds.map_batches(LLMPredictor, fn_constructor_kwargs=predictor_options,
                          batch_format="numpy", batch_size=batch_size, compute=pool,
                          num_cpus=num_cpus, num_gpus=num_gpus)


def actor_pool(concurrency: int | tuple[int, int]) -> ray.data.ActorPoolStrategy:
    """Ray Data's actor pool for ``concurrency``: a fixed size, or ``(min, max)``."""
    if isinstance(concurrency, tuple):
        low, high = concurrency
        return ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    return ray.data.ActorPoolStrategy(size=concurrency)


def check_cpus_left(actors: int, num_cpus: float, reserve_cpus: float) -> None:
    """Refuse ``actors`` of ``num_cpus`` each when they would leave the running Ray
    cluster fewer than ``reserve_cpus`` CPUs: Ray Data starts an actor pool before it
    reads, and a read task that finds no CPU waits for one forever, without a
    message. Without a connected cluster (Ray Data starts one later) nothing is
    checked."""
    if reserve_cpus <= 0 or not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    taken = actors * num_cpus
    if total - taken < reserve_cpus:
        raise ValueError(
            f"{actors} engine actor(s) x {num_cpus:g} CPU would take {taken:g} of the Ray "
            f"cluster's {total:g} CPUs and leave fewer than reserve_cpus={reserve_cpus:g} "
            "for Ray Data's read and write tasks, so a dataset read from files "
            "(read_parquet, read_json, ...) would wait forever. Give the actors fewer "
            "CPUs (num_cpus, concurrency), or pass reserve_cpus=0 for a dataset already "
            "in memory (from_items, from_pandas) that is not written out by Ray tasks.")
