"""Late-interaction (ColBERT) inputs, as Sentence-Transformers' MultiVectorEncoder makes
them: queries and documents with their own prefix and length, queries padded with
the mask token to a fixed length (expansion tokens the others do not attend to),
and the rows a document leaves out of its vectors (the skiplist: punctuation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from cenote.config.retrieval import LateInteractionConfig
from cenote.exceptions import VLLMValidationError
from cenote.inputs.prompts import SequenceInput
from cenote.inputs.tokenizer import Tokenizer, Truncation
from cenote.params import PoolingParams


class LateInteractionInputs:
    def __init__(self, config: LateInteractionConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        hf = tokenizer.hf
        # Skiplist words that are one token of the vocabulary (others cannot match).
        unknown = hf.unk_token_id
        ids = (hf.convert_tokens_to_ids(word) for word in config.skiplist_words)
        self.skip_ids = frozenset(i for i in ids if i is not None and i != unknown)
        token = config.expansion_token
        self.expansion_id = (hf.convert_tokens_to_ids(token) if token is not None
                             else hf.mask_token_id if hf.mask_token_id is not None
                             else hf.eos_token_id)
        if config.query_expansion and self.expansion_id is None:
            raise ValueError("Query expansion needs a mask (or EOS) token; this tokenizer has "
                             "neither.")

    def documents(self, seqs: Sequence[SequenceInput]) -> list[SequenceInput]:
        """Records of plain or document inputs: their skiplist rows left out."""
        return [replace(s, drop_token_ids=self.skip_ids) for s in seqs]

    def prepare(self, texts: Sequence[str], params: PoolingParams, query: bool,
                ) -> list[SequenceInput]:
        """Tokenised queries or documents, prefixed and cut (or expanded) as the model
        says; other ``params`` (normalize) as given."""
        config = self.config
        prompt = config.query_prompt if query else config.document_prompt
        length = config.query_length if query else config.document_length
        length = min(length or self.tokenizer.max_model_len, self.tokenizer.max_model_len)
        # Cut as Sentence-Transformers cuts: the first tokens kept, the last special too.
        tokenized = self.tokenizer.encode_prompts([prompt + t for t in texts],
                                                  Truncation(length, "right"))
        seqs = []
        for tok in tokenized:
            ids, visible = tok.token_ids, None
            if query and config.query_expansion and len(ids) < length:
                visible = None if config.expansion_attended else len(ids)
                ids = ids + [self.expansion_id] * (length - len(ids))
            drop = self.skip_ids if (not query or config.skiplist_queries) else frozenset()
            seqs.append(SequenceInput(ids, None, params, visible_len=visible,
                                      drop_token_ids=drop))
        return seqs


    def prepare_each(self, prompts: Sequence[object], params: Sequence[PoolingParams],
                     query: bool) -> list[SequenceInput]:
        """Prompts read as queries or documents on request (vLLM's ``embedding_mode``),
        each with its own ``params``: texts only, as the marker goes into the text."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise VLLMValidationError("ColBERT embedding_mode requires text prompts; token "
                                          "prompts are not supported.", parameter="input")
            if not prompt:
                raise ValueError(f"Prompt {i} is an empty string; it has nothing to encode.")
        seqs = self.prepare(prompts, params[0], query)
        return [replace(s, params=p) for s, p in zip(seqs, params, strict=True)]


def kept_rows(seq: SequenceInput, rows: torch.Tensor, drop_first_token: bool) -> torch.Tensor:
    """``rows`` (one per token, after ``drop_first_token``) less the dropped tokens'."""
    if not seq.drop_token_ids:
        return rows
    ids = seq.token_ids[1:] if drop_first_token else seq.token_ids
    keep = torch.tensor([i not in seq.drop_token_ids for i in ids], dtype=torch.bool)
    return rows[keep]
