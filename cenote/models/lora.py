"""LoRA adapters on a native model's linear layers, several in one packed batch.

Each adapted :class:`~cenote.models.linear.Linear` holds a :class:`LinearLoRA`: per
adapter id the low-rank pair ``A`` ``[r, in]`` and ``B`` ``[out, r]`` (PEFT's scale
folded into ``B``). A fused projection (q/k/v, gate/up) gets one pair: the parts' ``A``
stacked, their ``B`` placed block-diagonally at the part's output rows, so a part an
adapter does not target adds nothing. While a batch runs, every adapted linear reads
the same :class:`LoRARows` (which rows belong to which adapter) and adds
``x[rows] @ A.T @ B.T`` to those rows of its output; rows of the base model (id 0)
and batches without adapters take the base path unchanged.

Checkpoint module names map to the native model's linears through the model's
``lora_modules`` table (see :class:`~cenote.models.interface.PoolingModel`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cenote.config.lora import ADAPTER_WEIGHTS, AdapterConfig, LoRAError
from cenote.models.batch import PackedBatch, bucket_rows
from cenote.models.interface import PoolingModel
from cenote.models.linear import Linear, can_pack

# A PEFT tensor name: base_model.model.<module>.lora_A.weight (older PEFT kept the
# adapter's name: lora_A.default.weight).
_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])"
                     r"(?:\.[\w-]+)?\.weight$")
_DORA = re.compile(r"lora_magnitude_vector")
_EMBEDDING = re.compile(r"lora_embedding_[AB]")


def llama_lora_modules(attention: str) -> tuple[tuple[str, str, tuple[str, ...] | None], ...]:
    """``lora_modules`` of a Llama-shaped decoder (Qwen2/Qwen3/Mistral, Gemma3) whose
    attention module is ``layers.N.<attention>``: q/k/v fused, gate/up fused."""
    return (
        (r"layers\.(\d+)\.self_attn\.(?P<part>q|k|v)_proj", rf"layers.\1.{attention}.qkv",
         ("q", "k", "v")),
        (r"layers\.(\d+)\.self_attn\.o_proj", rf"layers.\1.{attention}.o_proj", None),
        (r"layers\.(\d+)\.mlp\.(?P<part>gate|up)_proj", r"layers.\1.mlp.gate_up",
         ("gate", "up")),
        (r"layers\.(\d+)\.mlp\.down_proj", r"layers.\1.mlp.down", None),
    )


class LoRARows:
    """The running batch's rows per adapter, shared by every adapted linear: ``groups``
    is ``[(adapter id, first row, end row)]``, None outside a batch with adapters."""

    def __init__(self) -> None:
        self.groups: list[tuple[int, int, int]] | None = None
        self.num_rows = 0
        # Whether the products run on row counts rounded up to ``bucket_rows`` (oneDNN
        # compiles a kernel per row count; see ModelRunner.bucket_rows).
        self.bucket = False


def _matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ W.T``, ``weight`` kept in oneDNN's layout when it could be (see ``_packed``)."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return F.linear(x, weight)


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout where it can be (as ``Linear.pack``): a
    plain bf16 matmul on CPU lays its weight out again on every call."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None) if can_pack(weight) else weight


class LinearLoRA:
    """The adapters of one linear layer: id -> (A ``[r, in]`` (in oneDNN's layout where
    it can be), B.T ``[r, out]``, scaled)."""

    def __init__(self, rows: LoRARows) -> None:
        self.rows = rows
        self.adapters: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def active(self) -> bool:
        return self.rows.groups is not None and bool(self.adapters)

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the base layer's ``x @ W.T + b``) plus each adapter's product on the
        rows of its sequences."""
        if x.shape[0] != self.rows.num_rows:
            raise RuntimeError(f"LoRA: a layer computed {x.shape[0]} rows of a batch of "
                               f"{self.rows.num_rows} with adapters active, so the adapters "
                               "cannot be applied. This is a bug in cenote, not in the "
                               "request: please report it with the model and the request; "
                               "the same request without a LoRA adapter is not affected.")
        total = x.shape[0]
        for adapter_id, start, end in self.rows.groups:
            pair = self.adapters.get(adapter_id)
            if pair is None:  # this adapter leaves this layer as it is
                continue
            a, b_t = pair
            # x @ A.T on a window of a bucketed row count around the group's rows (few
            # distinct shapes for oneDNN); only the group's rows go on.
            rows = min(bucket_rows(end - start), total) if self.rows.bucket else end - start
            first = min(start, total - rows)
            h = _matmul(x[first:first + rows], a)[start - first:end - first]
            # ``out`` is the base layer's fresh output: its rows take h @ B.T in place, in
            # one GEMM (beta 1) rather than a product and an add.
            if out.dtype == b_t.dtype:
                out[start:end].addmm_(h, b_t)
            else:
                out[start:end] += (h.to(b_t.dtype) @ b_t).to(out.dtype)
        return out


def _part_slices(out_features: int, parts: Sequence[str],
                 given: dict[str, int]) -> dict[str, tuple[int, int]] | None:
    """Output rows of each part of a fused projection, from the rows of the parts an
    adapter gives: the parts after the first share one size (k and v, gate and up), the
    first has the rest. None when the sizes cannot fit ``out_features``."""
    later = [given[p] for p in parts[1:] if p in given]
    if later:
        size = later[0]
        if any(s != size for s in later):
            return None
    elif parts[0] in given and len(parts) > 1:
        rest = out_features - given[parts[0]]
        if rest % (len(parts) - 1):
            return None
        size = rest // (len(parts) - 1)
    else:
        size = out_features // len(parts)
    first = out_features - size * (len(parts) - 1)
    if first <= 0 or size <= 0 or given.get(parts[0], first) != first:
        return None
    slices, start = {}, 0
    for i, part in enumerate(parts):
        end = start + (first if i == 0 else size)
        slices[part] = (start, end)
        start = end
    return slices


class ModelAdapters:
    """The LoRA adapters loaded into one native model, by integer id (0 is the base)."""

    def __init__(self, model: PoolingModel, dtype: torch.dtype, device: torch.device | str,
                 served_name: str) -> None:
        if not model.lora_modules:
            raise LoRAError(f"{type(model).__name__} takes no LoRA adapters in cenote; "
                            "LoRA is served on the native BERT/RoBERTa/XLM-R, ModernBERT, "
                            "Gemma3 and Qwen2/Qwen3/Llama/Mistral models.")
        self.model = model
        self.dtype, self.device = dtype, torch.device(device)
        self.served_name = served_name
        self.rows = LoRARows()
        self.linears = {name: m for name, m in model.named_modules() if isinstance(m, Linear)}
        self.loaded: set[int] = set()
        # Held while a batch with adapters runs: loads and unloads (from other threads)
        # attach and detach weights between batches.
        self._lock = threading.Lock()

    def load(self, adapter_id: int, config: AdapterConfig, max_rank: int,
             name: str = "") -> None:
        """Load the PEFT folder of ``config`` as ``adapter_id``; LoRAError (nothing loaded)
        for an adapter whose rank is above ``max_rank`` or that does not fit this model."""
        from safetensors.torch import load_file

        shown = name or str(config.path)
        if config.max_rank > max_rank:
            raise LoRAError(f"LoRA adapter {shown!r}: its rank {config.max_rank} is greater "
                            f"than max_lora_rank {max_rank} (--max-lora-rank); raise it to at "
                            f"least {config.max_rank}.")
        try:
            tensors = load_file(str(config.path / ADAPTER_WEIGHTS))
        except Exception as exc:  # safetensors raises its own error types
            raise LoRAError(f"{config.path / ADAPTER_WEIGHTS} cannot be read: {exc}") from exc
        pairs, names = self._pairs(tensors, config, shown)
        fused = {target: self._fuse(target, parts, names[target], config, shown)
                 for target, parts in pairs.items()}
        with self._lock:
            for target, pair in fused.items():  # every check passed: attach
                linear = self.linears[target]
                if linear.lora is None:
                    linear.lora = LinearLoRA(self.rows)
                linear.lora.adapters[adapter_id] = pair
            self.loaded.add(adapter_id)

    def unload(self, adapter_id: int) -> None:
        with self._lock:
            for linear in self.linears.values():
                if linear.lora is not None:
                    linear.lora.adapters.pop(adapter_id, None)
            self.loaded.discard(adapter_id)

    def _mismatch(self, shown: str, config: AdapterConfig, detail: str) -> LoRAError:
        base = config.base_model_name_or_path or "an unnamed base model"
        return LoRAError(f"LoRA adapter {shown!r} was trained for {base}, which does not match "
                         f"the served model {self.served_name}: {detail}.")

    def _pairs(self, tensors: dict[str, torch.Tensor], config: AdapterConfig, shown: str
               ) -> tuple[dict[str, dict[str | None, dict]], dict[str, tuple[str, ...] | None]]:
        """The adapter's A/B matrices by our linear and fused part, and each linear's
        parts."""
        found: dict[str, dict[str | None, dict]] = {}
        names: dict[str, tuple[str, ...] | None] = {}
        for key, tensor in tensors.items():
            if _DORA.search(key):
                raise LoRAError(f"LoRA adapter {shown!r} is a DoRA adapter ({key}); DoRA is "
                                "not supported.")
            if _EMBEDDING.search(key):
                raise LoRAError(f"LoRA adapter {shown!r} adapts an embedding ({key}); LoRA is "
                                "supported on linear layers only.")
            match = _TENSOR.match(key)
            if match is None:
                raise LoRAError(f"LoRA adapter {shown!r} has a tensor {key!r} that is not a "
                                "LoRA A/B matrix; only LoRA matrices are supported.")
            module = match["module"]
            target, part, names[target] = self._target(module, config, shown)
            if target not in self.linears:
                raise self._mismatch(shown, config, f"it adapts {module!r}, which this model "
                                                    "does not have")
            entry = found.setdefault(target, {}).setdefault(part, {"module": module})
            entry[match["ab"]] = tensor
        if not found:
            raise LoRAError(f"LoRA adapter {shown!r} has no LoRA matrices.")
        return found, names

    def _target(self, module: str, config: AdapterConfig, shown: str
                ) -> tuple[str, str | None, tuple[str, ...] | None]:
        """Our linear for a checkpoint module, its part of a fused projection, and the
        parts that projection fuses."""
        for pattern, template, parts in self.model.lora_modules:
            match = re.search(rf"(?:^|\.){pattern}$", module)
            if match:
                return match.expand(template), match["part"] if parts else None, parts
        targets = ", ".join(pattern for pattern, _, _ in self.model.lora_modules)
        detail = (f"it adapts {module!r}, which cenote's {type(self.model).__name__} has no "
                  f"adapter slot for; the modules it adapts (patterns): {targets}")
        if _same_name(config.base_model_name_or_path, self.served_name):
            raise LoRAError(f"LoRA adapter {shown!r}: {detail}.")
        raise self._mismatch(shown, config, detail)

    def _fuse(self, target: str, parts: dict[str | None, dict], names: tuple[str, ...] | None,
              config: AdapterConfig, shown: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One (A, B) pair for ``target`` from its parts' pairs, scales folded into B."""
        linear = self.linears[target]
        given: dict[str, int] = {}
        for part, entry in parts.items():
            a, b = entry.get("A"), entry.get("B")
            if a is None or b is None:
                raise LoRAError(f"LoRA adapter {shown!r}: {entry['module']} has only one of "
                                "lora_A and lora_B.")
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise LoRAError(f"LoRA adapter {shown!r}: {entry['module']}'s lora_A "
                                f"{tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair.")
            if a.shape[1] != linear.in_features:
                raise self._mismatch(shown, config, f"{entry['module']} takes {a.shape[1]} "
                                                    f"inputs, the model's {linear.in_features}")
            given[part] = b.shape[0]
        if names is None:
            slices = ({None: (0, linear.out_features)}
                      if given[None] == linear.out_features else None)
        else:
            slices = _part_slices(linear.out_features, names, given)
        if slices is None:
            sizes = ", ".join(f"{entry['module']}: {given[p]}" for p, entry in parts.items())
            raise self._mismatch(shown, config, f"output sizes {sizes} do not fit the model's "
                                                f"{linear.out_features}")
        a_parts, col = [], 0
        rank = sum(entry["A"].shape[0] for entry in parts.values())
        b_full = torch.zeros(linear.out_features, rank, dtype=torch.float32)
        for part, entry in parts.items():
            a, b = entry["A"].float(), entry["B"].float()
            start, end = slices[part]
            b_full[start:end, col:col + a.shape[0]] = b * config.scale(entry["module"])
            a_parts.append(a)
            col += a.shape[0]
        a_full = torch.cat(a_parts)
        return (_packed(a_full.to(self.device, self.dtype).contiguous()),
                b_full.t().to(self.device, self.dtype).contiguous())

    @contextlib.contextmanager
    def active(self, adapter_ids: Sequence[int], batch: PackedBatch) -> Iterator[None]:
        """Within: the linears add each sequence's adapter (``adapter_ids[i]`` for
        sequence i, 0 for none) to its rows of ``batch``."""
        with self._lock:
            self.rows.groups = adapter_groups(adapter_ids, batch, self.loaded)
            self.rows.num_rows = batch.num_rows
            try:
                yield
            finally:
                self.rows.groups = None


def _same_name(base: str | None, served: str) -> bool:
    """Whether an adapter's base_model_name_or_path names the served model (by its
    last path component: a hub id and a local copy of it are the same model)."""
    if not base:
        return False
    def last(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1].lower()

    return last(base) == last(served)


def by_adapter(adapter_ids: Sequence[int]) -> list[int] | None:
    """The order that puts the sequences of each adapter side by side (the base's
    first), or None when no sequence asks for an adapter."""
    if not any(adapter_ids):
        return None
    return sorted(range(len(adapter_ids)), key=adapter_ids.__getitem__)


def adapter_groups(adapter_ids: Sequence[int], batch: PackedBatch,
                   loaded: set[int]) -> list[tuple[int, int, int]] | None:
    """``[(adapter id, first row, end row)]`` for a batch whose sequence i asks for
    ``adapter_ids[i]`` (sorted: see ``by_adapter``); None when no sequence asks for
    one. LoRAError for an adapter that is not loaded (unloaded meanwhile)."""
    wanted = sorted(set(adapter_ids) - {0})
    if not wanted:
        return None
    missing = [i for i in wanted if i not in loaded]
    if missing:
        raise LoRAError(f"The LoRA adapter(s) this request asked for (id(s) {missing}) are not "
                        "loaded: unloaded before the request ran. Send it again naming a "
                        "loaded adapter (GET /v1/models lists them).")
    if any(a > b for a, b in zip(adapter_ids, adapter_ids[1:], strict=False)):
        raise ValueError("a batch's sequences must be sorted by adapter (see by_adapter)")
    cu = np.zeros(len(adapter_ids) + 1, dtype=np.int64)
    np.cumsum(batch.seq_lens, out=cu[1:])
    ids = np.asarray(adapter_ids, dtype=np.int64)
    return [(i, int(cu[np.argmax(ids == i)]), int(cu[len(ids) - np.argmax(ids[::-1] == i)]))
            for i in wanted]
