"""TEST-ONLY reference forwards of NomicBert and GTE "new", and tiny checkpoints in their
published layout. Not cenote code: cenote's implementations are cenote/models/nomic_bert.py
and cenote/models/gte.py, and the parity tests compare them with these.

transformers has no class for either family; their checkpoints ship the authors' code
(``trust_remote_code``), which cannot be fetched offline and needs packages cenote does not
install (einops). So these forwards restate that code, padded batch and all, read from:

- NomicBert: ``modeling_hf_nomic_bert.py`` / ``configuration_hf_nomic_bert.py`` as shipped
  with nomic-ai/nomic-embed-text-v1.5 (``NomicBertEmbeddings``, ``NomicBertAttention`` with
  ``NomicBertRotaryEmbedding`` / ``NomicBertDynamicNTKRotaryEmbedding``,
  ``NomciBertGatedMLP`` / ``NomicBertMLP``, ``NomicBertBlock`` pre- and post-norm,
  ``NomicBertModel.forward``);
- GTE: Alibaba-NLP/new-impl ``modeling.py`` / ``configuration.py`` (``NewEmbeddings``
  with ``RotaryEmbedding`` / ``NTKScalingRotaryEmbedding``, ``NewAttention`` with the
  log-n scale, ``NewGatedMLP``, ``NewLayer``, ``NewPooler`` and
  ``NewForSequenceClassification``).

Each keeps the original's padded-batch behaviour where it differs from per-sequence
computing (NomicBert's dynamic NTK base is taken from the padded length).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _layer_norm(sd: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _attention(q, k, v, mask):  # [B, L, H, D] each; mask [B, L] True = a real token
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None, None, :])
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


@functools.lru_cache(maxsize=4)
def _load(folder: Path, strip: str = "") -> tuple[dict, dict]:
    """A folder's config.json and fp32 tensors (``strip``: a name prefix to cut)."""
    cfg = json.loads((folder / "config.json").read_text())
    sd = {k.removeprefix(strip): v.float()
          for k, v in load_file(str(folder / "model.safetensors")).items()}
    return cfg, sd


def _pad(token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, token_ids))
    ids = torch.tensor([t + [0] * (length - len(t)) for t in token_ids])
    mask = torch.tensor([[True] * len(t) + [False] * (length - len(t)) for t in token_ids])
    return ids, mask


@torch.no_grad()
def nomic_bert_hidden(folder: Path, token_ids: list[list[int]],
                      rope: tuple[torch.Tensor, float] | None = None) -> list[torch.Tensor]:
    """``NomicBertModel(...).last_hidden_state`` of each sequence (padded batch), fp32.
    ``rope``: other inverse frequencies and cos/sin scale (vLLM's context extension,
    which the authors' code does not have)."""
    cfg, sd = _load(Path(folder))
    hidden, heads, eps = cfg["n_embd"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    head_dim = hidden // heads
    ids, mask = _pad(token_ids)
    batch, length = ids.shape
    x = sd["embeddings.word_embeddings.weight"][ids]
    if cfg.get("type_vocab_size", 2) > 0:
        x = x + sd["embeddings.token_type_embeddings.weight"][0]
    fraction = cfg.get("rotary_emb_fraction", 0.0)
    if fraction <= 0:
        x = x + sd["embeddings.position_embeddings.weight"][:length]
    x = _layer_norm(sd, "emb_ln", x, eps)
    ro_dim = head_dim * fraction
    cos = sin = None
    if ro_dim > 0:
        base = float(cfg.get("rotary_emb_base", 10000))
        factor, trained = cfg.get("rotary_scaling_factor"), cfg.get("max_trained_positions", 2048)
        if factor and length > trained:  # NomicBertDynamicNTKRotaryEmbedding, padded length
            base = base * ((factor * length / trained) - (factor - 1)) ** (ro_dim / (ro_dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, ro_dim, 2, dtype=torch.float32) / ro_dim))
        scale = 1.0
        if rope is not None:
            inv_freq, scale = rope
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        cos = scale * torch.cat([freqs.cos()] * 2, -1)[:, None, :]  # "... d -> ... 1 (2 d)"
        sin = scale * torch.cat([freqs.sin()] * 2, -1)[:, None, :]
    act = {"swiglu": F.silu, "glu": torch.sigmoid, "geglu": F.gelu}.get(
        cfg.get("activation_function"))
    residual = None
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}"

        def attn(h, p=p):
            qkv = _linear(sd, f"{p}.attn.Wqkv", h).view(batch, length, 3, heads, head_dim)
            q, k, v = qkv.unbind(2)
            if cos is not None:
                r = int(ro_dim)
                q, k = (torch.cat([t[..., :r] * cos + _rotate_half(t[..., :r]) * sin,
                                   t[..., r:]], -1) for t in (q, k))
            return _linear(sd, f"{p}.attn.out_proj", _attention(q, k, v, mask))

        def mlp(h, p=p):
            if act is None:  # NomicBertMLP: its activation is always exact GELU
                return _linear(sd, f"{p}.mlp.fc2", F.gelu(_linear(sd, f"{p}.mlp.fc1", h)))
            y, gate = _linear(sd, f"{p}.mlp.fc11", h), _linear(sd, f"{p}.mlp.fc12", h)
            return _linear(sd, f"{p}.mlp.fc2", y * act(gate))

        if cfg.get("prenorm"):
            residual = x if residual is None else x + residual
            residual = attn(_layer_norm(sd, f"{p}.norm1", residual, eps)) + residual
            x = mlp(_layer_norm(sd, f"{p}.norm2", residual, eps))
        else:
            x = _layer_norm(sd, f"{p}.norm1", attn(x) + x, eps)
            x = _layer_norm(sd, f"{p}.norm2", mlp(x) + x, eps)
    return [x[b, :len(t)] for b, t in enumerate(token_ids)]


def _gte_inv_freq(cfg: dict, dim: int) -> torch.Tensor:
    base, scaling = cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")
    arange = torch.arange(0, dim, 2).float()
    if scaling is None or scaling["factor"] <= 1:  # RotaryEmbedding
        return 1.0 / (base ** (arange / dim))
    factor, mixed_b = scaling["factor"], scaling.get("mixed_b")  # NTKScalingRotaryEmbedding
    inv_freq = 1.0 / ((base * (factor if mixed_b is None else 1)) ** (arange / dim))
    if mixed_b is None:
        return inv_freq / factor ** (2 / dim)
    a = torch.tensor(factor).log() / (dim / 2) ** mixed_b
    return inv_freq / (a * torch.arange(1, dim // 2 + 1).float() ** mixed_b).exp()


@torch.no_grad()
def gte_new_forward(folder: Path, token_ids: list[list[int]]
                    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``NewModel`` hidden states of each sequence and, for ``NewForSequenceClassification``,
    the logits ``[B, num_labels]`` (else None); padded batch, fp32."""
    cfg, sd = _load(Path(folder), "new.")
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    head_dim = hidden // heads
    ids, mask = _pad(token_ids)
    batch, length = ids.shape
    x = sd["embeddings.word_embeddings.weight"][ids]
    if cfg.get("type_vocab_size", 1) > 0:
        x = x + sd["embeddings.token_type_embeddings.weight"][0]
    rope = cfg.get("position_embedding_type", "rope") == "rope"
    if not rope:
        x = x + sd["embeddings.position_embeddings.weight"][:length]
    x = _layer_norm(sd, "embeddings.LayerNorm", x, eps)
    freqs = torch.outer(torch.arange(length).float(), _gte_inv_freq(cfg, head_dim))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    scale = None
    if cfg.get("logn_attention_scale"):
        scale = mask.sum(1).float().log() / torch.tensor(cfg["max_position_embeddings"]).log()
        if cfg.get("logn_attention_clip1"):
            scale = scale.clip(1)
        scale = scale[:, None, None, None]

    def norm(name, h):
        if cfg.get("layer_norm_type", "layer_norm") == "layer_norm":
            return _layer_norm(sd, name, h, eps)
        h32 = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return sd[f"{name}.weight"] * h32

    act = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}[cfg.get("hidden_act", "gelu")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        if cfg.get("pack_qkv", True):
            q, k, v = _linear(sd, f"{p}.attention.qkv_proj", x).split(hidden, dim=-1)
        else:
            q, k, v = (_linear(sd, f"{p}.attention.{n}_proj", x) for n in "qkv")
        q, k, v = (t.view(batch, length, heads, head_dim) for t in (q, k, v))
        if rope:
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if scale is not None:
            q = q * scale
        attended = _linear(sd, f"{p}.attention.o_proj", _attention(q, k, v, mask))
        x = norm(f"{p}.attn_ln", x + attended)
        up, gate = _linear(sd, f"{p}.mlp.up_gate_proj", x).split(cfg["intermediate_size"], -1)
        x = norm(f"{p}.mlp_ln", x + _linear(sd, f"{p}.mlp.down_proj", act(gate) * up))
    logits = None
    if "classifier.weight" in sd:
        logits = _linear(sd, "classifier", torch.tanh(_linear(sd, "pooler.dense", x[:, 0])))
    return [x[b, :len(t)] for b, t in enumerate(token_ids)], logits


def _random(shape, generator, kind: str, std: float) -> torch.Tensor:
    if kind == "norm.weight":
        return 1 + 0.2 * torch.randn(shape, generator=generator)
    return (std if len(shape) > 1 else 2 * std) * torch.randn(shape, generator=generator)


def write_checkpoint(folder: Path, config: dict, shapes: dict[str, tuple[int, ...]],
                     minilm_path: Path, seed: int = 0, std: float = 0.1) -> Path:
    """A folder laid out as the published checkpoints: ``config.json`` (with its
    ``auto_map`` to code that is not there), ``model.safetensors`` under the real tensor
    names, random weights (matrices ``std``: wide enough at test widths that mistakes
    show), and MiniLM's tokenizer."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    # Every 1-D weight here is a norm's: around 1, the rest around 0.
    tensors = {name: _random(shape, generator, "norm.weight" if len(shape) == 1
                             and name.endswith("weight") else "", std)
               for name, shape in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    transformers.AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return folder


def nomic_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The tensors of a saved ``NomicBertModel`` (names as nomic-embed-text's)."""
    h, layers = config["n_embd"], config["n_layer"]
    gated = config["activation_function"] in ("swiglu", "glu", "geglu")
    inner = config.get("n_inner") or (int(8 * h / 3) if gated else 4 * h)
    if gated:
        inner = (inner + 255) // 256 * 256
    shapes = {"embeddings.word_embeddings.weight": (config["vocab_size"], h),
              "emb_ln.weight": (h,), "emb_ln.bias": (h,)}
    if config.get("type_vocab_size", 2) > 0:
        shapes["embeddings.token_type_embeddings.weight"] = (config.get("type_vocab_size", 2), h)
    if config.get("rotary_emb_fraction", 0.0) <= 0:
        shapes["embeddings.position_embeddings.weight"] = (config["n_positions"], h)
    qkv_bias = config.get("qkv_proj_bias", True)
    for i in range(layers):
        p = f"encoder.layers.{i}"
        shapes.update({f"{p}.attn.Wqkv.weight": (3 * h, h), f"{p}.attn.out_proj.weight": (h, h),
                       f"{p}.mlp.fc2.weight": (h, inner)})
        for n in ("norm1", "norm2"):
            shapes.update({f"{p}.{n}.weight": (h,), f"{p}.{n}.bias": (h,)})
        if qkv_bias:
            shapes.update({f"{p}.attn.Wqkv.bias": (3 * h,), f"{p}.attn.out_proj.bias": (h,)})
        fc1 = ("fc11", "fc12") if gated else ("fc1",)
        for n in fc1:
            shapes[f"{p}.mlp.{n}.weight"] = (inner, h)
            if config.get("mlp_fc1_bias", True):
                shapes[f"{p}.mlp.{n}.bias"] = (inner,)
        if config.get("mlp_fc2_bias", True):
            shapes[f"{p}.mlp.fc2.bias"] = (h,)
    return shapes


def gte_shapes(config: dict, classifier: bool) -> dict[str, tuple[int, ...]]:
    """The tensors of a saved ``NewModel`` (``new.``-prefixed with the pooler and
    classifier for ``NewForSequenceClassification``), names as GTE's."""
    h, inner = config["hidden_size"], config["intermediate_size"]
    prefix = "new." if classifier else ""
    rms = config.get("layer_norm_type") == "rms_norm"
    shapes = {"embeddings.word_embeddings.weight": (config["vocab_size"], h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    if config.get("type_vocab_size", 1) > 0:
        shapes["embeddings.token_type_embeddings.weight"] = (config.get("type_vocab_size", 1), h)
    if config.get("position_embedding_type", "rope") == "absolute":
        shapes["embeddings.position_embeddings.weight"] = (config["max_position_embeddings"], h)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        if config.get("pack_qkv", True):
            shapes.update({f"{p}.attention.qkv_proj.weight": (3 * h, h),
                           f"{p}.attention.qkv_proj.bias": (3 * h,)})
        else:
            for n in "qkv":
                shapes.update({f"{p}.attention.{n}_proj.weight": (h, h),
                               f"{p}.attention.{n}_proj.bias": (h,)})
        shapes.update({f"{p}.attention.o_proj.weight": (h, h), f"{p}.attention.o_proj.bias": (h,),
                       f"{p}.mlp.up_gate_proj.weight": (2 * inner, h),
                       f"{p}.mlp.down_proj.weight": (h, inner), f"{p}.mlp.down_proj.bias": (h,)})
        for n in ("attn_ln", "mlp_ln"):
            shapes[f"{p}.{n}.weight"] = (h,)
            if not rms:
                shapes[f"{p}.{n}.bias"] = (h,)
    shapes = {prefix + k: v for k, v in shapes.items()}
    if classifier:
        labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
        shapes.update({"new.pooler.dense.weight": (h, h), "new.pooler.dense.bias": (h,),
                       "classifier.weight": (labels, h), "classifier.bias": (labels,)})
    return shapes


def st_layout(folder: Path, pooling: str, width: int, prompts: dict[str, str] | None = None
              ) -> Path:
    """Sentence-Transformers modules as the models ship them: Transformer, Pooling
    (``cls`` or ``mean``), Normalize; ``prompts`` in config_sentence_transformers.json."""
    modules = [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
               for i, (p, t) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                           ("2_Normalize", "Normalize")])]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean"}))
    if prompts:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": prompts, "default_prompt_name": None}))
    return folder


def pool(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence-Transformers' CLS or mean pooling of one sequence, then Normalize."""
    vector = hidden[0] if pooling == "cls" else hidden.mean(0)
    return F.normalize(vector, dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))

