"""Model configuration, decided once when a model is loaded: ``model`` (ModelConfig),
``hub`` (where its files are), ``hf`` (its Hugging Face config and overrides),
``sentence_transformers`` (a Sentence-Transformers folder's modules) and ``pooler``
(pooling types and the default pooler of each task)."""

from cenote.config.hub import ModelNotFoundError, default_model_path
from cenote.config.model import ModelConfig
from cenote.config.pooler import PoolerConfig, PoolingType

__all__ = ["ModelConfig", "ModelNotFoundError", "PoolerConfig", "PoolingType",
           "default_model_path"]
