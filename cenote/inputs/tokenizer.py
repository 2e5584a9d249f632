"""Tokenising prompts and text pairs: validation, truncation, the length limit, and fast
batched encodes on the Rust backend."""

from __future__ import annotations

import numbers
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cenote.config.hub import TOKENIZER_FILES, has_tokenizer_files
from cenote.exceptions import VLLMValidationError
from cenote.inputs.prompts import Prompt, TokenizedPrompt, check_unicode

TRUNCATION_SIDES = ("left", "right")
# No tokenizer's tokens span this many characters on average, so a text longer than this
# many characters per token of the length limit cannot fit in it: it is cut (when the
# request truncates) or refused before the tokenizer sees it. Tokenising a 30 MB string
# only to refuse it took 75 s and 4 GB. The floor keeps whitespace-heavy texts of short-
# context models (a BERT word piece skips any run of spaces) from being refused.
CHARS_PER_TOKEN_BOUND = 64
MIN_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class Truncation:
    """Cut an input to ``keep`` tokens: ``left`` drops its first tokens (vLLM's default),
    ``right`` its last (as Sentence-Transformers and TEI do)."""

    keep: int
    side: str = "left"

    def apply(self, ids: list[int] | None) -> list[int] | None:
        """``ids`` cut to ``keep``. After the tokenizer's own truncation this matters only
        when ``keep`` is below the special tokens it adds: it then truncates nothing,
        and the ids are cut here instead."""
        if ids is None or len(ids) <= self.keep:
            return ids
        return list(ids[-self.keep:] if self.side == "left" else ids[:self.keep])


class ContextLengthError(ValueError):
    """An input longer than ``max_model_len``. ``operation`` ("embedding generation",
    "classification", "score"), when set, names what the input was for, as vLLM's
    server words it."""

    def __init__(self, max_model_len: int, num_tokens: int, at_least: bool = False) -> None:
        super().__init__(max_model_len, num_tokens)
        self.max_model_len = max_model_len
        self.num_tokens = num_tokens
        # Counted on the input's first characters only (it was too long to tokenise whole).
        self.at_least = at_least
        self.operation: str | None = None

    def requested(self) -> str:
        return f"{'at least ' if self.at_least else ''}{self.num_tokens} tokens"

    def __str__(self) -> str:
        purpose = f" for {self.operation}" if self.operation else ""
        return (f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {self.requested()} in the input{purpose}. Please reduce "
                "the length of the input.")


class EmbedLengthError(ContextLengthError):
    """An input longer than ``max_embed_len``, with chunked processing on."""

    def __init__(self, max_embed_len: int, max_model_len: int, num_tokens: int,
                 at_least: bool = False) -> None:
        super().__init__(max_model_len, num_tokens, at_least)
        self.max_embed_len = max_embed_len

    def __str__(self) -> str:
        return (f"This model's maximum embedding input length (max_embed_len) is "
                f"{self.max_embed_len} tokens; inputs are processed in chunks of "
                f"max_model_len = {self.max_model_len} tokens. However, you requested "
                f"{self.requested()} in the input. Please reduce the length of the input.")


class Tokenizer:
    """Wraps a Hugging Face tokenizer; uses its Rust backend for batches when it has one."""

    def __init__(self, path: Path, max_model_len: int, trust_remote_code: bool = False,
                 model_vocab_size: int | None = None, max_embed_len: int | None = None,
                 special_tokens: bool = True) -> None:
        """``special_tokens=False``: texts are read without [CLS]/[SEP] and the like,
        whatever a request asks (a static model's mean is of the text's own tokens)."""
        from transformers import AutoTokenizer, PretrainedConfig

        if not has_tokenizer_files(path):
            # transformers would build an empty tokenizer that reads every word as [UNK].
            raise ValueError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                             "save the model's tokenizer into the folder.")
        # A static model's config.json is its library's, not one transformers reads.
        own_config = {} if special_tokens else {"config": PretrainedConfig()}
        self.hf = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                **own_config)
        self.max_model_len = max_model_len
        # With chunked processing, the longest input embed takes (in chunks).
        self.max_embed_len = max_embed_len
        # Ids past the model's embedding rows would crash it, even if the tokenizer has them.
        self.vocab_size = min(len(self.hf), model_vocab_size or len(self.hf))
        self._check_text_ids = self.vocab_size < len(self.hf)
        self._emits_types = "token_type_ids" in getattr(self.hf, "model_input_names", ())
        self.backend = getattr(self.hf, "backend_tokenizer", None)
        if self.backend is not None:
            # A copy of its own: the Hugging Face tokenizer (``LLM.get_tokenizer()``)
            # leaves truncation switched on in its backend after a call with
            # truncation=True, which would cut every later encode made through it.
            self.backend = type(self.backend).from_str(self.backend.to_str())
            self.backend.no_truncation()
            self.backend.no_padding()
            if not special_tokens:
                self.backend.post_processor = None
        elif not special_tokens:
            raise ValueError(f"{path} needs a fast tokenizer (tokenizer.json).")
        # Truncation is a setting of the Rust tokenizer, so truncating encodes use a
        # copy of their own, made on first use and guarded by the lock; the shared
        # backend never changes, so untruncated encodes (the server's usual case)
        # run from any thread without waiting on a long encode elsewhere.
        self._truncating_backends: dict[str, Any] = {}
        self._lock = threading.Lock()

    def resolve_truncation(self, truncate_prompt_tokens: int | None,
                           side: str | None = None) -> Truncation | None:
        """``truncate_prompt_tokens`` and ``truncation_side`` checked, as a ``Truncation``."""
        if side is not None and side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be 'left' or 'right', not {side!r}.")
        if truncate_prompt_tokens is None:
            return None
        if isinstance(truncate_prompt_tokens, bool) or not isinstance(truncate_prompt_tokens, int):
            raise ValueError("truncate_prompt_tokens must be an integer.")
        if truncate_prompt_tokens == -1:
            return Truncation(self.max_model_len, side or "left")
        if truncate_prompt_tokens < 1:
            raise ValueError("truncate_prompt_tokens must be -1 or a positive integer.")
        if truncate_prompt_tokens > self.max_model_len:
            # vLLM 0.34's exact words (its tests compare the whole message).
            raise VLLMValidationError(
                "truncate_prompt_tokens value is greater than max_model_len. Please request "
                "a smaller truncation size.", parameter="truncate_prompt_tokens")
        return Truncation(truncate_prompt_tokens, side or "left")

    def encode_prompts(
        self, prompts: Sequence[Prompt], cut: Truncation | None = None,
        add_special_tokens: bool = True, chunked: bool = False,
    ) -> list[TokenizedPrompt]:
        """Tokenise strings, validate token-id prompts, enforce ``max_model_len`` (with
        ``chunked``, ``max_embed_len``: the input runs in chunks).
        ``add_special_tokens=False``: texts without [CLS]/[SEP], BOS/EOS and the like."""
        out: list[TokenizedPrompt | None] = [None] * len(prompts)
        texts, text_slots = [], []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if not prompt:
                    raise ValueError(f"Prompt {i} is an empty string; it has nothing to encode.")
                check_unicode(prompt, f"Prompt {i}")
                texts.append(self.bound_text(prompt, cut, chunked, add_special_tokens))
                text_slots.append(i)
            else:
                ids = self.validate_token_ids(prompt["prompt_token_ids"], i)
                out[i] = TokenizedPrompt(cut.apply(ids) if cut else ids)
        for slot, ids in zip(text_slots, self._encode_texts(texts, cut, add_special_tokens),
                             strict=True):
            if not ids:
                raise ValueError(f"Prompt {slot} has no tokens (it tokenises to nothing).")
            self._check_model_knows(ids, f"Prompt {slot}")
            out[slot] = TokenizedPrompt(ids)
        for prompt in out:
            self.check_length(len(prompt.token_ids), chunked)
        return out

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """``text``'s token ids, uncut, and each token's character span in ``text``
        (``(0, 0)`` for special tokens); the length limit enforced. Only a fast (Rust)
        tokenizer knows the spans: without one, ``ValueError``."""
        if self.backend is None:
            raise ValueError("Late chunking requires a fast tokenizer with offsets aligned "
                             "to all input tokens")
        check_unicode(text, "The prompt")
        encoding = self.backend.encode(self.bound_text(text, None, False, add_special_tokens),
                                       add_special_tokens=add_special_tokens)
        self._check_model_knows(encoding.ids, "The prompt")
        self.check_length(len(encoding.ids))
        return list(encoding.ids), [tuple(span) for span in encoding.offsets]

    def encode_pairs(
        self, pairs: Sequence[tuple[str, str]], cut: Truncation | None = None,
        as_one_text: bool = False,
    ) -> list[TokenizedPrompt]:
        """Tokenise text pairs for a cross-encoder (token type ids included), or with
        ``as_one_text`` each pair as the one text ``a + b`` (an LLM used as reranker)."""
        for i, (a, b) in enumerate(pairs):
            if not isinstance(a, str) or not isinstance(b, str):
                raise TypeError(f"Score pair {i} must hold two strings.")
            if not a or not b:
                raise ValueError(f"Score pair {i} has an empty string; it has nothing to encode.")
            check_unicode(a, f"Score pair {i}")
            check_unicode(b, f"Score pair {i}")
        pairs = [(self.bound_text(a, cut), self.bound_text(b, cut)) for a, b in pairs]
        if as_one_text:
            out = [TokenizedPrompt(ids)
                   for ids in self._encode_texts([a + b for a, b in pairs], cut)]
        elif self.backend is not None:
            encodings = self._backend_encode(list(pairs), cut)
            # Only where the tokenizer hands them to its model (BERT's does, RoBERTa's and
            # GPT-2's do not): a model that takes them anyway would read the second text
            # as another segment than it was trained on.
            out = [TokenizedPrompt(_cut(cut, e.ids),
                                   _cut(cut, e.type_ids) if self._emits_types else None)
                   for e in encodings]
        else:
            enc = self.hf([a for a, _ in pairs], [b for _, b in pairs])
            types = enc.get("token_type_ids") or [None] * len(pairs)
            out = [TokenizedPrompt(_cut(cut, ids), _cut(cut, t))
                   for ids, t in zip(enc["input_ids"], types, strict=True)]
        for i, prompt in enumerate(out):
            self._check_model_knows(prompt.token_ids, f"Score pair {i}")
            self.check_length(len(prompt.token_ids))
        return out

    def max_text_chars(self, chunked: bool = False) -> int | None:
        """The most characters of one text the tokenizer sees (None: no limit, for chunked
        processing without ``max_embed_len``)."""
        limit = self.max_embed_len if chunked else self.max_model_len
        return None if limit is None else max(MIN_TEXT_CHARS, CHARS_PER_TOKEN_BOUND * limit)

    def bound_text(self, text: str, cut: Truncation | None, chunked: bool = False,
                   add_special_tokens: bool = True) -> str:
        """``text``, or as much of it as could ever be read: the characters on the kept
        side when the input is truncated (the tokens kept are the same), and a length
        error counted on its first characters when it is not."""
        bound = self.max_text_chars(chunked)
        if bound is None or len(text) <= bound:
            return text
        if cut is not None:
            return text[-bound:] if cut.side == "left" else text[:bound]
        (ids,) = self._encode_texts([text[:bound]], None, add_special_tokens)
        if chunked:
            raise EmbedLengthError(self.max_embed_len, self.max_model_len, len(ids), True)
        if len(ids) > self.max_model_len:
            raise ContextLengthError(self.max_model_len, len(ids), True)
        raise ValueError(f"The input has {len(text)} characters; this model reads at most "
                         f"{bound} untruncated ({CHARS_PER_TOKEN_BOUND} per token of its "
                         "length limit). Shorten it, or send truncate_prompt_tokens.")

    def _check_model_knows(self, ids: list[int], where: str) -> None:
        """Where the tokenizer has more ids than the model has embeddings: refuse a text
        that tokenised into one of the extra ids (the model would crash on it)."""
        if self._check_text_ids and ids and max(ids) >= self.vocab_size:
            raise ValueError(f"{where} has token id {max(ids)}, which the tokenizer knows but "
                             f"the model does not (its vocabulary has {self.vocab_size} ids).")

    def validate_token_ids(self, ids: Any, index: int) -> list[int]:
        if hasattr(ids, "tolist") and getattr(ids, "ndim", None) == 1:
            ids = ids.tolist()  # a numpy array or a torch tensor of ids
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ValueError(f"Prompt {index}: prompt_token_ids must be a non-empty list of ints.")
        ids = list(ids)
        for k, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise ValueError(f"Prompt {index}: token id {t!r} is not an integer.")
            ids[k] = t = int(t)  # numpy's integers too
            if not 0 <= t < self.vocab_size:
                # Most often ids from another tokenizer: LangChain's OpenAIEmbeddings
                # sends tiktoken (cl100k) ids by default.
                raise ValueError(
                    f"Prompt {index}: token id {t} is out of vocabulary "
                    f"(valid ids are 0 to {self.vocab_size - 1}). Ids from another "
                    "tokenizer? LangChain's OpenAIEmbeddings sends tiktoken ids unless "
                    "created with check_embedding_ctx_length=False: send the texts."
                )
        return ids

    def check_length(self, num_tokens: int, chunked: bool = False) -> None:
        """``chunked``: the input runs in chunks, so only ``max_embed_len`` limits it."""
        if chunked:
            if self.max_embed_len is not None and num_tokens > self.max_embed_len:
                raise EmbedLengthError(self.max_embed_len, self.max_model_len, num_tokens)
        elif num_tokens > self.max_model_len:
            raise ContextLengthError(self.max_model_len, num_tokens)

    def _encode_texts(self, texts: list[str], cut: Truncation | None,
                      add_special_tokens: bool = True) -> list[list[int]]:
        if not texts:
            return []
        if self.backend is not None:
            encoded = [e.ids for e in self._backend_encode(texts, cut, add_special_tokens)]
        else:  # a tokenizer without a Rust backend: encoded whole, then cut
            encoded = self.hf(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return encoded if cut is None else [cut.apply(ids) for ids in encoded]

    def prompt_length(self, prompt: str) -> int:
        """Tokens an instruction ``prompt`` puts before a text: its own tokens with the
        leading special tokens, without a trailing one (as Sentence-Transformers counts)."""
        ids = self.hf(prompt)["input_ids"]
        if ids and ids[-1] in set(self.hf.all_special_ids):
            return len(ids) - 1
        return len(ids)

    def _backend_encode(self, inputs: list, cut: Truncation | None,
                        add_special_tokens: bool = True):
        if cut is None:
            return _encode_batch(self.backend, inputs, add_special_tokens)
        with self._lock:
            backend = self._truncating_backends.get(cut.side)
            if backend is None:
                backend = type(self.backend).from_str(self.backend.to_str())
                self._truncating_backends[cut.side] = backend
            backend.enable_truncation(cut.keep, direction=cut.side)
            return _encode_batch(backend, inputs, add_special_tokens)

    def vocab_ids(self, tokens: list[str]) -> list[int]:
        """The vocabulary ids of ``tokens`` (each must be one token of the vocabulary)."""
        vocab = self.hf.get_vocab()
        unknown = [t for t in tokens if t not in vocab]
        if unknown:
            raise ValueError(f"classifier_from_token {unknown!r} "
                             f"{'is' if len(unknown) == 1 else 'are'} not in the tokenizer's "
                             "vocabulary; give tokens as the tokenizer spells them.")
        return [vocab[t] for t in tokens]

    def boundary_ids(self) -> frozenset[int]:
        """The ids of the [CLS]/BOS, EOS, padding and unknown tokens this tokenizer has
        (BGE-M3 leaves them out of its lexical weights)."""
        ids = (self.hf.cls_token_id, self.hf.eos_token_id, self.hf.pad_token_id,
               self.hf.unk_token_id)
        return frozenset(i for i in ids if i is not None)

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids)

    def pad(self, prompt: TokenizedPrompt) -> TokenizedPrompt:
        """``prompt`` padded to ``max_model_len`` with the pad token, on the tokenizer's
        padding side (vLLM's ``padding="max_length"``: the model reads the pad tokens as
        any others, without an attention mask); token type ids are padded with 0."""
        extra = self.max_model_len - len(prompt.token_ids)
        if extra <= 0:
            return prompt
        if self.hf.pad_token_id is None:
            raise ValueError("padding 'max_length' needs a pad token; this model's tokenizer "
                             "has none.")
        left = self.hf.padding_side == "left"

        def padded(ids: list[int] | None, value: int) -> list[int] | None:
            if ids is None:
                return None
            return [value] * extra + ids if left else ids + [value] * extra

        return TokenizedPrompt(padded(prompt.token_ids, self.hf.pad_token_id),
                               padded(prompt.token_type_ids, 0))


def _cut(cut: Truncation | None, ids: list[int] | None) -> list[int] | None:
    return ids if cut is None else cut.apply(ids)


def _encode_batch(backend, inputs: list, add_special_tokens: bool = True):
    """``encode_batch`` without character offsets (nothing here reads them) where the
    tokenizers version has it: ~20 % less tokenising time on one core."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return encode(inputs, add_special_tokens=add_special_tokens)
