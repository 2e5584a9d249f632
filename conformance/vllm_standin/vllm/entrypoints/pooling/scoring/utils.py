"""The ColBERT score vLLM's tests compute as their reference (written from its
definition: for each query token, its largest similarity to a document token, summed)."""

import torch

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


def compute_maxsim_score(q_emb: torch.Tensor, d_emb: torch.Tensor) -> torch.Tensor:
    similarity = q_emb.float() @ d_emb.float().T  # [query_len, doc_len]
    return similarity.max(dim=-1).values.sum()
