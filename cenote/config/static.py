"""Static embedding folders: model2vec's and Sentence-Transformers' ``StaticEmbedding``.

A static model is a table of token vectors: a text's embedding is the mean of its
tokens' rows, read without special tokens, then (as the folder says) normalised.
Its folder has no Hugging Face config to read, so :class:`StaticEmbeddingConfig`
stands in for one (it has the names cenote reads from a config) and also says how
the model's library pools, so that cenote's vectors are that library's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cenote.config.hub import read_json, static_module_folder
from cenote.config.pooler import PoolingType
from cenote.config.sentence_transformers import SentenceTransformersConfig

STATIC_MODEL_TYPE = "static_embedding"
# model2vec's length limit when its config names none (model2vec.model.DEFAULT_MAX_LENGTH).
MODEL2VEC_DEFAULT_MAX_LENGTH = 512
# The limit of a folder whose tokenizer does not truncate (its library reads any length).
UNTRUNCATED_MAX_MODEL_LEN = 32768
# Where each library keeps the table, by tensor name.
_TABLES = {"embeddings": "model2vec", "embedding.weight": "sentence-transformers"}


@dataclass
class StaticEmbeddingConfig:
    """A static embedding model as loaded; also the model's stand-in HF config."""

    # "model2vec" (a StaticModel folder) or "sentence-transformers" (StaticEmbedding).
    library: str
    architectures: list[str]
    hidden_size: int
    vocab_size: int
    # model2vec's ``normalize``; None: Sentence-Transformers' modules say (a Normalize).
    normalize: bool | None
    # Where the library cuts a text (its first tokens kept); None: it reads all of it.
    truncation_length: int | None
    # A token the mean leaves out: model2vec drops the unknown token; None: none.
    ignored_token_id: int | None
    matryoshka_dimensions: list[int] | None = None
    is_matryoshka: bool = False
    model_type: str = STATIC_MODEL_TYPE

    def max_model_len(self, user_value: int | None) -> int:
        """The longest input: the user's, else where the library truncates."""
        if user_value is not None and user_value < 1:
            raise ValueError(f"max_model_len must be positive, got {user_value}.")
        return int(user_value or self.truncation_length or UNTRUNCATED_MAX_MODEL_LEN)


def static_pooling(static: StaticEmbeddingConfig,
                   st: SentenceTransformersConfig | None) -> SentenceTransformersConfig:
    """How the library pools: the mean of the token vectors, then model2vec's
    normalisation or the Sentence-Transformers modules after the table (Normalize,
    Dense)."""
    st = st or SentenceTransformersConfig()
    st.pooling_type = PoolingType.MEAN
    if static.normalize is not None:
        st.normalize = static.normalize
    return st


def check_static_options(task: str, quantization: str | None) -> None:
    """Refuse what a static model cannot do: any task but embedding, int8 matmuls."""
    if task not in ("auto", "embed", "score"):
        raise ValueError(f"A static embedding model embeds texts; task={task!r} does not "
                         "apply (its pooling tasks are encode, embed and token_embed).")
    if quantization not in (None, "none", ""):
        raise ValueError("A static embedding model has no matmuls to quantize; leave "
                         "quantization unset.")


def read_static_embedding_config(root: Path, path: Path) -> StaticEmbeddingConfig | None:
    """The static model in ``root`` (its model files in ``path``), None for any other
    folder. A model2vec ``config.json`` makes it a model2vec model (unknown tokens
    left out, its ``normalize`` and ``max_length``) even where the folder also has
    the ``modules.json`` model2vec writes for Sentence-Transformers."""
    config = read_json(path / "config.json")
    model_type = config.get("model_type")
    in_modules = static_module_folder(root) is not None
    if not in_modules and model_type not in (None, "model2vec"):
        return None  # any other model: its safetensors are not opened here
    table = _table(path)
    # model2vec configs before 0.3 name no model_type; their table is "embeddings".
    is_model2vec = model_type == "model2vec" or (
        model_type is None and table is not None and table[0] == "embeddings")
    if not is_model2vec and not in_modules:
        return None
    if table is None:
        raise ValueError(f"Static embedding folder {str(path)!r} has no table of token "
                         "vectors (a safetensors tensor named 'embeddings' or "
                         "'embedding.weight').")
    name, shape, rows = table
    if len(shape) != 2:
        raise ValueError(f"{str(path)!r}: the token vectors {name!r} have shape "
                         f"{tuple(shape)}; expected [vocabulary, dimensions].")
    tokenizer = _read_tokenizer(path)
    dims = config.get("matryoshka_dimensions")
    if is_model2vec:
        length = config.get("max_length", MODEL2VEC_DEFAULT_MAX_LENGTH)
        return StaticEmbeddingConfig(
            library="model2vec", architectures=list(config.get("architectures") or
                                                     ["StaticModel"]),
            hidden_size=int(shape[1]), vocab_size=rows,
            normalize=bool(config.get("normalize", False)),
            truncation_length=length if isinstance(length, int) and length > 0 else None,
            ignored_token_id=_unknown_token_id(tokenizer),
            matryoshka_dimensions=dims,
            # A PCA'd table keeps its strongest components first: model2vec truncates it
            # (``dimensionality``) as a Matryoshka model is truncated.
            is_matryoshka=bool(config.get("is_matryoshka") or config.get("apply_pca")))
    truncation = tokenizer.get("truncation") or {}
    return StaticEmbeddingConfig(
        library="sentence-transformers", architectures=["StaticEmbedding"],
        hidden_size=int(shape[1]), vocab_size=rows,
        normalize=None,
        truncation_length=truncation.get("max_length") or None,
        ignored_token_id=None, matryoshka_dimensions=dims,
        is_matryoshka=bool(config.get("is_matryoshka")))


def _table(path: Path) -> tuple[str, list[int], int] | None:
    """``(name, shape, rows)`` of the token-vector table in ``path``'s safetensors; rows
    count token ids, which a model2vec ``mapping`` (vocabulary quantization) maps onto
    fewer vectors."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            names = set(handle.keys())
            for name in _TABLES:
                if name in names:
                    shape = list(handle.get_slice(name).get_shape())
                    rows = (handle.get_slice("mapping").get_shape()[0]
                            if "mapping" in names else shape[0] if shape else 0)
                    return name, shape, int(rows)
    return None


def _read_tokenizer(path: Path) -> dict:
    file = path / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"Static embedding folder {str(path)!r} has no tokenizer.json; "
                         "a static model reads its texts with that tokenizer.")
    return json.loads(file.read_text())


def _unknown_token_id(tokenizer: dict) -> int | None:
    """The id of the tokenizer's unknown token, found as model2vec finds it."""
    model = tokenizer.get("model") or {}
    if model.get("type") == "Unigram":
        return model.get("unk_id")
    token = model.get("unk_token")
    if token is None:
        return None
    vocab = model.get("vocab")
    if isinstance(vocab, dict) and token in vocab:
        return vocab[token]
    added = {t.get("content"): t.get("id") for t in tokenizer.get("added_tokens") or []}
    return added.get(token)
