"""The LoRA adapters an engine serves, by name: registered from ``--lora-modules``, at
run time (``/v1/load_lora_adapter``) or by an offline ``LoRARequest``, and loaded into
the model (:mod:`cenote.models.lora`, which attaches them between batches).

At most ``--max-loras`` adapters are loaded at once; one more is refused with a clear
error (nothing is evicted: a served name never disappears behind the client's back).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

from cenote.config.lora import AdapterConfig, LoRAError, LoRAOptions, LoRARequest
from cenote.exceptions import VLLMValidationError
from cenote.inputs.prompts import SequenceInput


class LoRANotFoundError(LoRAError):
    """An adapter name that is not loaded (404 at the server, as an unknown model)."""


class LoRARegistry:
    """The adapters of one engine: name -> :class:`LoRARequest`, their weights in the
    runner's model (``runner.adapters``)."""

    def __init__(self, options: LoRAOptions, adapters) -> None:
        self.options = options
        self._model = adapters  # cenote.models.lora.ModelAdapters, or None when disabled
        self._by_name: dict[str, LoRARequest] = {}
        # The highest id ever loaded: run-time loads take the next one, so an id is never
        # reused in a process (a request queued with an unloaded adapter's id is refused
        # as not loaded; it never runs through an adapter loaded after it).
        self._last_id = 0
        self._lock = threading.RLock()

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    @property
    def requests(self) -> list[LoRARequest]:
        """The loaded adapters, in load order."""
        return list(self._by_name.values())

    def get(self, name: str) -> LoRARequest | None:
        return self._by_name.get(name)

    def load_modules(self) -> None:
        """Load ``--lora-modules`` (at start)."""
        for request in self.options.modules:
            self.add(request)

    def next_id(self) -> int:
        """An id no adapter of this process has had (one above the highest loaded)."""
        with self._lock:
            return self._last_id + 1

    def add(self, request: LoRARequest) -> None:
        """Load ``request``'s adapter under its name; LoRAError when LoRA is off, the
        name or id is taken, ``--max-loras`` are loaded, or the adapter does not fit."""
        if not self.enabled or self._model is None:
            raise LoRAError("LoRA is not enabled: start the server with --enable-lora "
                            "(LLM(..., enable_lora=True) offline) to load adapters.")
        with self._lock:
            if request.lora_name in self._by_name:
                raise LoRAError(f"The lora adapter '{request.lora_name}' has already been "
                                "loaded.")
            if any(r.lora_int_id == request.lora_int_id for r in self._by_name.values()):
                raise LoRAError(f"lora_int_id {request.lora_int_id} is already used by another "
                                "adapter; give each adapter its own id.")
            if len(self._by_name) >= self.options.max_loras:
                raise LoRAError(f"Cannot load LoRA adapter '{request.lora_name}': "
                                f"{len(self._by_name)} adapters are loaded, the most "
                                f"--max-loras ({self.options.max_loras}) allows. Unload one "
                                "(/v1/unload_lora_adapter) or raise --max-loras.")
            config = AdapterConfig.load(request.lora_path)
            self._model.load(request.lora_int_id, config, self.options.max_lora_rank,
                             request.lora_name)
            self._by_name[request.lora_name] = request
            self._last_id = max(self._last_id, request.lora_int_id)

    def load(self, name: str, path: str, replace: bool = False) -> LoRARequest:
        """Load the adapter at ``path`` as ``name`` with a new id; with ``replace``, in
        place of the adapter of that name (the old one serves until the new one loaded)."""
        with self._lock:
            old = self._by_name.get(name) if replace else None
            request = LoRARequest(name, self.next_id(), path)
            if old is None:
                self.add(request)
                return request
            config = AdapterConfig.load(path)
            self._model.load(request.lora_int_id, config, self.options.max_lora_rank, name)
            self._by_name[name] = request
            self._last_id = max(self._last_id, request.lora_int_id)
            self._model.unload(old.lora_int_id)
            return request

    def remove(self, name: str) -> None:
        """Unload the adapter named ``name``; LoRANotFoundError if none is."""
        if not self.enabled:
            raise LoRAError("LoRA is not enabled: start the server with --enable-lora.")
        with self._lock:
            request = self._by_name.pop(name, None)
            if request is None:
                raise LoRANotFoundError(f"The lora adapter '{name}' cannot be found.")
            self._model.unload(request.lora_int_id)

    def resolve(self, request: LoRARequest) -> int:
        """An offline request's adapter id, loading it on first use (as vLLM does); the
        lookup and the load are one step under the lock, so threads resolving the same
        request load it once."""
        with self._lock:
            known = self._by_name.get(request.lora_name)
            if known is None:
                self.add(request)
                return request.lora_int_id
            if known.lora_int_id != request.lora_int_id or (
                    request.lora_path and known.lora_path != request.lora_path):
                raise LoRAError(f"LoRA adapter '{request.lora_name}' is loaded with id "
                                f"{known.lora_int_id} from {known.lora_path}; this request "
                                f"gives id {request.lora_int_id} and {request.lora_path}.")
            return known.lora_int_id


def with_adapters(seqs: Sequence[SequenceInput], adapter_ids: Sequence[int]
                  ) -> list[SequenceInput]:
    """``seqs`` with sequence i run through adapter ``adapter_ids[i]`` (0: the base).
    Late chunking runs on the base model only, as in vLLM."""
    if any(i and seq.late_chunking is not None
           for seq, i in zip(seqs, adapter_ids, strict=True)):
        raise VLLMValidationError("Late chunking does not support LoRA adapters: send the "
                                  "request without one (the base model's name).",
                                  parameter="late_chunking_params")
    return [seq if i == seq.lora_id else replace(seq, lora_id=i)
            for seq, i in zip(seqs, adapter_ids, strict=True)]
