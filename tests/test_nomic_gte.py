"""NomicBert and GTE "new" run natively (their checkpoints' remote code never runs) and
match the authors' models on the same weights.

The reference is tests/reference_rotary_encoders.py: a test-only restatement of the
authors' published modelling code (nomic-embed-text-v1.5's ``modeling_hf_nomic_bert.py``,
Alibaba-NLP/new-impl's ``modeling.py``; transformers has no class for either, and their
code cannot be fetched offline), run on a padded batch in fp32. Tiny random checkpoints
in the published layout: config.json with ``auto_map`` and ``architectures``, the real
tensor names, Sentence-Transformers modules where the models ship them.
"""

from __future__ import annotations

import pytest
import torch

from cenote import LLM
from cenote.config.remote_code import NomicBertConfig
from cenote.models.gte import GteNewModel
from cenote.models.nomic_bert import NomicBertModel
from tests.reference_rotary_encoders import (
    cosine,
    gte_new_forward,
    gte_shapes,
    nomic_bert_hidden,
    nomic_shapes,
    pool,
    st_layout,
    write_checkpoint,
)

TEXTS = [
    "hello world",
    "a somewhat longer sentence about search engines, ranking and retrieval quality",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]
NOMIC_AUTO_MAP = {
    "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
    "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"}
GTE_AUTO_MAP = {"AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
                "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
                "AutoModelForSequenceClassification":
                    "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification"}
# nomic-embed-text-v1.5's config.json, narrowed (64 wide, 2 heads of 32, 3 layers).
NOMIC_V15 = {
    "architectures": ["NomicBertModel"], "auto_map": NOMIC_AUTO_MAP, "model_type": "nomic_bert",
    "activation_function": "swiglu", "bos_token_id": None, "causal": False,
    "eos_token_id": None, "fused_bias_fc": True, "layer_norm_epsilon": 1e-12,
    "max_trained_positions": 2048, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
    "n_embd": 64, "n_head": 2, "n_inner": 256, "n_layer": 3, "n_positions": 8192,
    "pad_vocab_size_multiple": 64, "prenorm": False, "qkv_proj_bias": False,
    "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False,
    "rotary_scaling_factor": None, "type_vocab_size": 2, "use_flash_attn": True,
    "vocab_size": 30528}
# gte-base-en-v1.5's / gte-multilingual-base's, narrowed (64 wide, 2 heads, 3 layers).
GTE_BASE = {
    "architectures": ["NewModel"], "auto_map": GTE_AUTO_MAP, "model_type": "new",
    "hidden_act": "gelu", "hidden_size": 64, "intermediate_size": 96,
    "layer_norm_eps": 1e-12, "layer_norm_type": "layer_norm", "logn_attention_clip1": False,
    "logn_attention_scale": False, "max_position_embeddings": 8192, "num_attention_heads": 2,
    "num_hidden_layers": 3, "pack_qkv": True, "position_embedding_type": "rope",
    "rope_scaling": {"factor": 2.0, "type": "ntk"}, "rope_theta": 160000,
    "type_vocab_size": 1, "unpad_inputs": True, "use_memory_efficient_attention": True,
    "vocab_size": 30528}
PROMPTS = {"query": "search_query: ", "document": "search_document: "}


@pytest.fixture(scope="module")
def build(minilm_path, tmp_path_factory):
    def make(family: str, config: dict, pooling: str | None = None, seed: int = 0):
        folder = tmp_path_factory.mktemp(family)
        classifier = config["architectures"][0] == "NewForSequenceClassification"
        shapes = nomic_shapes(config) if family == "nomic" else gte_shapes(config, classifier)
        write_checkpoint(folder, config, shapes, minilm_path, seed=seed)
        if pooling:
            st_layout(folder, pooling, 64, PROMPTS if family == "nomic" else None)
        return folder
    return make


def _reference(family: str, folder, outs) -> list[torch.Tensor]:
    ids = [o.prompt_token_ids for o in outs]
    return nomic_bert_hidden(folder, ids) if family == "nomic" else gte_new_forward(folder, ids)[0]


def _check(folder, family: str, pooling: str, dtype: str, min_cosine: float, **kwargs):
    llm = LLM(str(folder), dtype=dtype, **kwargs)
    expected = NomicBertModel if family == "nomic" else GteNewModel
    assert isinstance(llm.engine.runner.model, expected)
    outs = llm.embed(TEXTS)
    for out, hidden in zip(outs, _reference(family, folder, outs), strict=True):
        assert cosine(torch.tensor(out.outputs.embedding), pool(hidden, pooling)) >= min_cosine


@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_nomic_embed_v15_layout_matches_the_authors_model(build, dtype, min_cosine):
    _check(build("nomic", NOMIC_V15, "mean"), "nomic", "mean", dtype, min_cosine)


@pytest.mark.parametrize("overrides", [
    # pre-norm, biases, GLU, half of each head rotated (the non-kernel rotary path)
    {"prenorm": True, "qkv_proj_bias": True, "mlp_fc1_bias": True, "mlp_fc2_bias": True,
     "activation_function": "glu", "rotary_emb_fraction": 0.5, "n_inner": None},
    # learned positions, plain GELU MLP, no token types (v1's BERT-shaped variants)
    {"rotary_emb_fraction": 0.0, "activation_function": "gelu", "n_positions": 128,
     "qkv_proj_bias": True, "mlp_fc1_bias": True, "mlp_fc2_bias": True,
     "type_vocab_size": 0, "n_head": 4},
    # GeGLU with 4 heads of 16
    {"activation_function": "geglu", "n_head": 4},
], ids=["prenorm-glu-partial-rotary", "learned-positions-gelu", "geglu"])
def test_nomic_variants_match_the_authors_model(build, overrides):
    folder = build("nomic", {**NOMIC_V15, **overrides}, seed=1)
    _check(folder, "nomic", "cls", "float32", 0.9999)  # no ST folder: [CLS], as vLLM pools


def test_nomic_dynamic_ntk_past_its_trained_length(build):
    # rotary_scaling_factor: past max_trained_positions the base grows with the length.
    config = {**NOMIC_V15, "max_trained_positions": 16, "rotary_scaling_factor": 2,
              "n_positions": 256}
    folder = build("nomic", config, "mean", seed=2)
    llm = LLM(str(folder), dtype="float32")
    assert llm.config.max_model_len == 256
    for text in (TEXTS[1], TEXTS[3], TEXTS[0]):  # one at a time: the authors' base follows
        out = llm.embed([text])[0]              # the padded batch's length
        ids = out.prompt_token_ids
        reference = pool(nomic_bert_hidden(folder, [ids])[0], "mean")
        assert cosine(torch.tensor(out.outputs.embedding), reference) >= 0.9999
    unscaled = folder.parent / "unscaled"
    unscaled.mkdir()
    for item in folder.iterdir():
        if item.is_file():
            (unscaled / item.name).write_bytes(item.read_bytes())
    import json
    (unscaled / "config.json").write_text(json.dumps({**config, "rotary_scaling_factor": None}))
    long_ids = llm.embed([TEXTS[3]])[0].prompt_token_ids
    assert len(long_ids) > 16
    assert cosine(nomic_bert_hidden(folder, [long_ids])[0],
                  nomic_bert_hidden(unscaled, [long_ids])[0]) < 0.9999  # the test can fail


def test_nomic_without_the_factor_serves_its_trained_length(build):
    llm = LLM(str(build("nomic", NOMIC_V15, "mean")), dtype="float32")
    assert llm.config.max_model_len == 512  # ST's max_seq_length under max_trained_positions
    folder = build("nomic", {**NOMIC_V15, "max_trained_positions": 64})
    assert LLM(str(folder), dtype="float32").config.max_model_len == 64


@pytest.mark.parametrize("family, config, pooling", [
    ("nomic", NOMIC_V15, "mean"), ("gte", GTE_BASE, "cls")], ids=["nomic", "gte"])
def test_one_token_and_full_length_prompts_match_the_authors_model(build, family, config,
                                                                   pooling):
    folder = build(family, config, pooling, seed=5)
    llm = LLM(str(folder), dtype="float32")
    longest = llm.config.max_model_len
    prompts = [[101], list(range(1000, 1000 + longest)), [101, 2054, 102]]
    outs = llm.embed([{"prompt_token_ids": ids} for ids in prompts])
    for out, hidden in zip(outs, _reference(family, folder, outs), strict=True):
        assert cosine(torch.tensor(out.outputs.embedding), pool(hidden, pooling)) >= 0.9999
    with pytest.raises(ValueError):
        llm.embed([{"prompt_token_ids": list(range(1000, 1001 + longest))}])


def test_nomic_takes_a_stated_max_position_embeddings(build):
    # A limit given as max_position_embeddings (hf_overrides, or a config.json that has
    # one) is the limit; learned positions stop at their table's n_positions.
    folder = build("nomic", NOMIC_V15)
    llm = LLM(str(folder), dtype="float32", hf_overrides={"max_position_embeddings": 4096})
    assert llm.config.max_model_len == 4096
    learned = {**NOMIC_V15, "rotary_emb_fraction": 0.0, "n_positions": 128,
               "max_position_embeddings": 4096}
    assert NomicBertConfig.from_dict(learned).max_position_embeddings == 128
    saved = NomicBertConfig.from_dict({**NOMIC_V15, "max_position_embeddings": 4096}).to_dict()
    assert NomicBertConfig.from_dict(saved).max_position_embeddings == 4096


def test_nomic_prompts_come_from_the_sentence_transformers_config(build):
    llm = LLM(str(build("nomic", NOMIC_V15, "mean")), dtype="float32")
    named = llm.embed(["what is rope"], prompt_name="query")[0]
    spelled = llm.embed(["search_query: what is rope"])[0]
    assert named.prompt_token_ids == spelled.prompt_token_ids
    assert named.outputs.embedding == pytest.approx(spelled.outputs.embedding, abs=1e-6)


@pytest.mark.parametrize("dtype, min_cosine", [("float32", 0.9999), ("auto", 0.998)])
def test_gte_base_layout_matches_the_authors_model(build, dtype, min_cosine):
    _check(build("gte", GTE_BASE, "cls"), "gte", "cls", dtype, min_cosine)


@pytest.mark.parametrize("overrides", [
    # q/k/v saved apart, RMSNorm, mixed NTK, GTE's log-n attention scale
    {"pack_qkv": False, "layer_norm_type": "rms_norm", "logn_attention_scale": True,
     "logn_attention_clip1": False, "max_position_embeddings": 64, "type_vocab_size": 0,
     "rope_scaling": {"factor": 4.0, "type": "ntk", "mixed_b": 0.9}, "num_attention_heads": 4},
    # learned positions, no scaling
    {"position_embedding_type": "absolute", "rope_scaling": None, "max_position_embeddings": 128,
     "hidden_act": "silu"},
], ids=["unpacked-rms-mixed-ntk-logn", "learned-positions"])
def test_gte_variants_match_the_authors_model(build, overrides):
    _check(build("gte", {**GTE_BASE, **overrides}, "cls", seed=1), "gte", "cls", "float32",
           0.9999)


def test_gte_takes_rope_overrides_as_its_config(build):
    # hf_overrides rope_theta / rope_scaling (vLLM passes both to GTE's rotary) act as the
    # same values in config.json would; a scaling GTE's code does not know is refused.
    scaling = {"rope_type": "ntk", "factor": 4.0, "mixed_b": 0.9}
    folder = build("gte", GTE_BASE, "cls", seed=4)
    stated = build("gte", {**GTE_BASE, "rope_theta": 5000, "rope_scaling": scaling}, "cls",
                   seed=4)
    overridden = LLM(str(folder), dtype="float32",
                     hf_overrides={"rope_theta": 5000, "rope_scaling": scaling}).embed(TEXTS)
    expected = LLM(str(stated), dtype="float32").embed(TEXTS)
    plain = LLM(str(folder), dtype="float32").embed(TEXTS)
    for got, want, base in zip(overridden, expected, plain, strict=True):
        assert got.outputs.embedding == pytest.approx(want.outputs.embedding, abs=1e-5)
        assert got.outputs.embedding != pytest.approx(base.outputs.embedding, abs=1e-3)
    theta_only = LLM(str(stated), dtype="float32", hf_overrides={"rope_theta": 5000})
    assert theta_only.embed(TEXTS[:1])[0].outputs.embedding == pytest.approx(
        expected[0].outputs.embedding, abs=1e-5)  # the scaling stays
    with pytest.raises(ValueError, match="ntk"):
        LLM(str(folder), hf_overrides={"rope_scaling": {"rope_type": "yarn", "factor": 2.0,
                                                        "original_max_position_embeddings": 64}})


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("auto", 2e-2)])
def test_gte_reranker_classifier_matches_the_authors_model(build, dtype, atol):
    config = {**GTE_BASE, "architectures": ["NewForSequenceClassification"],
              "id2label": {"0": "no", "1": "yes"}, "label2id": {"no": 0, "yes": 1}}
    folder = build("gte_cls", config, seed=3)
    llm = LLM(str(folder), dtype=dtype)
    assert isinstance(llm.engine.runner.model, GteNewModel)
    outs = llm.classify(TEXTS)
    _, logits = gte_new_forward(folder, [o.prompt_token_ids for o in outs])
    ours = torch.tensor([o.outputs.probs for o in outs])
    assert torch.allclose(ours, logits.softmax(-1), atol=atol)


def test_remote_code_is_never_run(build):
    # Each config's auto_map names code that is not in the folder: running it would fail.
    for family, config in (("nomic", NOMIC_V15), ("gte", GTE_BASE)):
        llm = LLM(str(build(family, config, "cls")), dtype="float32", trust_remote_code=True)
        expected = NomicBertModel if family == "nomic" else GteNewModel
        assert isinstance(llm.engine.runner.model, expected)


def test_unsupported_nomic_options_are_refused(build):
    folder = build("nomic", {**NOMIC_V15, "rotary_emb_interleaved": True})
    with pytest.raises(ValueError, match="rotary_emb_interleaved"):
        LLM(str(folder), dtype="float32")


def _adapter_and_merged(folder, target, modules: dict[str, tuple[int, int]], seed: int):
    """A PEFT LoRA folder (r 4, alpha 8) on ``modules`` (checkpoint module -> (out, in))
    and a copy of ``folder`` with the adapter merged into its weights (W + 2 * B @ A)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(seed)
    merged = shutil.copytree(folder, target / "merged")
    adapter = target / "adapter"
    adapter.mkdir()
    weights = load_file(str(folder / "model.safetensors"))
    tensors = {}
    for module, (out_features, in_features) in modules.items():
        a = 0.1 * torch.randn(4, in_features, generator=generator)
        b = 0.1 * torch.randn(out_features, 4, generator=generator)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        weights[f"{module}.weight"] = weights[f"{module}.weight"] + 2.0 * b @ a
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    save_file(weights, str(merged / "model.safetensors"))
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": targets,
        "bias": "none", "task_type": "FEATURE_EXTRACTION"}))
    return adapter, merged


@pytest.mark.parametrize("family", ["nomic", "gte"])
def test_lora_adapters_on_the_fused_projections_equal_merged_weights(build, family,
                                                                    tmp_path):
    from cenote import LoRARequest

    if family == "nomic":
        folder = build("nomic", NOMIC_V15, "mean", seed=4)
        layer = "encoder.layers.1"
        modules = {f"{layer}.attn.Wqkv": (192, 64), f"{layer}.mlp.fc11": (256, 64),
                   f"{layer}.mlp.fc12": (256, 64), f"{layer}.mlp.fc2": (64, 256),
                   f"{layer}.attn.out_proj": (64, 64)}
    else:
        folder = build("gte", GTE_BASE, "cls", seed=4)
        layer = "encoder.layer.1"
        modules = {f"{layer}.attention.qkv_proj": (192, 64),
                   f"{layer}.mlp.up_gate_proj": (192, 64), f"{layer}.mlp.down_proj": (64, 96)}
    adapter, merged = _adapter_and_merged(folder, tmp_path, modules, seed=5)
    llm = LLM(str(folder), dtype="float32", enable_lora=True)
    adapted = llm.embed(TEXTS, lora_request=LoRARequest("a", 1, str(adapter)))
    base = llm.embed(TEXTS)
    expected = LLM(str(merged), dtype="float32").embed(TEXTS)
    for got, want, plain in zip(adapted, expected, base, strict=True):
        got, want = torch.tensor(got.outputs.embedding), torch.tensor(want.outputs.embedding)
        assert torch.allclose(got, want, atol=1e-4)
        assert not torch.allclose(got, torch.tensor(plain.outputs.embedding), atol=1e-3)


def test_nomic_context_extension_by_rope_override_as_vllm(build):
    # vLLM's recipe: hf_overrides rope_scaling (YaRN here) lifts the limit to
    # original_max_position_embeddings * factor; the frequencies are transformers' YaRN
    # of the rotary channels at rotary_emb_base, cos/sin scaled by its attention factor.
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    folder = build("nomic", NOMIC_V15)  # no ST folder: its max_seq_length would cap it
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
    llm = LLM(str(folder), dtype="float32", hf_overrides={"rope_scaling": scaling},
              max_model_len=8192)
    assert llm.config.max_model_len == 8192
    llama = LlamaConfig(hidden_size=64, num_attention_heads=2,
                        rope_parameters={**scaling, "rope_theta": 1000.0})
    rope = ROPE_INIT_FUNCTIONS["yarn"](llama, torch.device("cpu"))
    assert rope[1] > 1.0  # YaRN's attention factor
    outs = llm.embed(TEXTS)
    reference = nomic_bert_hidden(folder, [o.prompt_token_ids for o in outs], rope=rope)
    plain = nomic_bert_hidden(folder, [o.prompt_token_ids for o in outs])
    for out, hidden, unscaled in zip(outs, reference, plain, strict=True):
        vector = torch.tensor(out.outputs.embedding)
        assert cosine(vector, pool(hidden, "cls")) >= 0.9999
        assert cosine(vector, pool(unscaled, "cls")) < 0.99999


def test_gte_reranker_scores_pairs_as_the_authors_model(build):
    # One label (gte-multilingual-reranker-base): score is its sigmoid. The tokenizer
    # here marks the document as token type 1, which a one-type model reads as type 0.
    from transformers import AutoTokenizer

    config = {**GTE_BASE, "architectures": ["NewForSequenceClassification"],
              "id2label": {"0": "LABEL_0"}}
    folder = build("gte_rr", config, seed=6)
    documents = TEXTS[:3]
    scores = [o.outputs.score for o in LLM(str(folder), dtype="float32").score("a query",
                                                                            documents)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer("a query", d)["input_ids"] for d in documents]
    _, logits = gte_new_forward(folder, ids)
    assert scores == pytest.approx(torch.sigmoid(logits[:, 0]).tolist(), abs=1e-5)


def test_other_heads_checkpoints_embed_natively_with_the_body(build, tmp_path):
    # NomicBertForPreTraining saves the body under "bert." beside its masked-LM head;
    # NewForMaskedLM under "new." beside "lm_head.": by model_type, the body embeds.
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    for family, config, prefix, head, architecture in (
            ("nomic", NOMIC_V15, "bert.", "cls.predictions.transform.dense.weight",
             "NomicBertForPreTraining"),
            ("gte", GTE_BASE, "new.", "lm_head.dense.weight", "NewForMaskedLM")):
        folder = build(family, config, seed=7)
        renamed = shutil.copytree(folder, tmp_path / family)
        tensors = {prefix + k: v for k, v in load_file(str(folder / "model.safetensors")).items()}
        tensors[head] = torch.zeros(64, 64)
        save_file(tensors, str(renamed / "model.safetensors"))
        (renamed / "config.json").write_text(json.dumps({**config,
                                                         "architectures": [architecture]}))
        ours = LLM(str(renamed), dtype="float32")
        assert isinstance(ours.engine.runner.model, NomicBertModel if family == "nomic"
                          else GteNewModel)
        for a, b in zip(ours.embed(TEXTS), LLM(str(folder), dtype="float32").embed(TEXTS),
                        strict=True):
            assert a.outputs.embedding == pytest.approx(b.outputs.embedding, abs=1e-6)
