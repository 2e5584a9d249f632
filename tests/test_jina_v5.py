"""jina-embeddings-v5 by architecture (``JinaEmbeddingsV5Model``): the Qwen3 variant runs as
cenote's native decoder (last token, normalised) and the PEFT task adapters in its folder
are served as LoRA adapters named after their subfolders; the EuroBERT variant is refused."""

from __future__ import annotations

import copy
import json
import shutil

import openai
import pytest
import torch
import torch.nn.functional as F

from cenote import LLM, LoRARequest
from cenote.config.lora import LoRAError
from tests.factories import build_tiny_decoder
from tests.lora_factories import build_adapter
from tests.serving import cenote_serve

TEXTS = ["hello world", "a somewhat longer sentence about search engines and ranking", "x"]
TASKS = {"retrieval": ["q_proj", "v_proj", "down_proj"],
         "text-matching": ["k_proj", "o_proj", "gate_proj", "up_proj"]}


@pytest.fixture(scope="module")
def jina_v5(minilm_path, tmp_path_factory):
    """(folder, {"base" | task: the merged model}) of a tiny JinaEmbeddingsV5Model with its
    task adapters in adapters/<task>/ and Jina's query/document prompts."""
    import transformers

    path = build_tiny_decoder(minilm_path, tmp_path_factory.mktemp("jina-v5"), "qwen3",
                              "Qwen3Model")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["JinaEmbeddingsV5Model"]
    (path / "config.json").write_text(json.dumps(config))
    # Sentence-Transformers' layout: last-token pooling, normalised, Jina's prompts.
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_lasttoken": True}))
    (path / "2_Normalize").mkdir()
    (path / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "Query: ", "document": "Document: "}}))
    base = transformers.Qwen3Model.from_pretrained(path, dtype=torch.float32).eval()
    models = {"base": base}
    for seed, (task, targets) in enumerate(TASKS.items()):
        adapted = build_adapter(base, path / "adapters" / task, targets, seed=seed, r=4)
        models[task] = copy.deepcopy(adapted).merge_and_unload().eval()
    return path, models


@torch.no_grad()
def _last_token(model, outs) -> torch.Tensor:
    return torch.stack([F.normalize(model(input_ids=torch.tensor([o.prompt_token_ids]))
                                    .last_hidden_state[0, -1], dim=-1) for o in outs])


def _vectors(outs) -> torch.Tensor:
    return torch.stack([torch.as_tensor(o.outputs.embedding) for o in outs])


@pytest.fixture(scope="module")
def llm(jina_v5):
    return LLM(str(jina_v5[0]), dtype="float32", enable_lora=True, max_loras=2)


def test_each_task_adapter_equals_its_merged_model(llm, jina_v5):
    """Ids follow the adapters' folder paths: retrieval 1, text-matching 2."""
    _, models = jina_v5
    assert [(r.lora_name, r.lora_int_id) for r in llm.engine.loras.requests] == [
        ("retrieval", 1), ("text-matching", 2)]
    requests = {None: None, "retrieval": LoRARequest("retrieval", 1),
                "text-matching": LoRARequest("text-matching", 2)}
    mixed = [None, "retrieval", "text-matching"]
    outs = llm.embed(TEXTS, lora_request=[requests[t] for t in mixed])  # one batch, three ways
    for i, task in enumerate(mixed):
        expected = _last_token(models[task or "base"], outs[i:i + 1])
        assert F.cosine_similarity(_vectors(outs[i:i + 1]), expected).min() >= 0.9999
    for task in TASKS:
        outs = llm.embed(TEXTS, lora_request=requests[task])
        assert F.cosine_similarity(_vectors(outs), _last_token(models[task], outs)).min() >= 0.9999
        assert F.cosine_similarity(_vectors(outs), _last_token(models["base"], outs)).min() < 0.99


def test_base_and_prompts(llm, jina_v5):
    outs = llm.embed(TEXTS)
    assert F.cosine_similarity(_vectors(outs), _last_token(jina_v5[1]["base"], outs)).min() \
        >= 0.9999
    query = llm.embed(["x"], prompt_name="query", lora_request=LoRARequest("retrieval", 1))
    plain = llm.embed(["Query: x"], lora_request=LoRARequest("retrieval", 1))
    assert query[0].prompt_token_ids == plain[0].prompt_token_ids
    assert torch.allclose(_vectors(query), _vectors(plain), atol=1e-6)


def test_task_adapters_count_against_max_loras(jina_v5):
    with pytest.raises(LoRAError, match=r"ships 2 task adapters \(retrieval, text-matching\).*"
                                        r"--max-loras is 1"):
        LLM(str(jina_v5[0]), dtype="float32", enable_lora=True)
    plain = LLM(str(jina_v5[0]), dtype="float32")  # without LoRA: the base, no adapters
    assert plain.engine.loras.requests == []


def test_the_eurobert_variant_is_refused_by_name(jina_v5, tmp_path):
    path = shutil.copytree(jina_v5[0], tmp_path / "nano", ignore=shutil.ignore_patterns("adapters"))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, is_decoder=False)))
    with pytest.raises(ValueError, match="EuroBERT"):
        LLM(str(path), dtype="float32")
    import transformers  # a EuroBERT config under this architecture, no is_decoder: refused too

    transformers.EuroBertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=96, architectures=["JinaEmbeddingsV5Model"]
                                ).save_pretrained(path)
    with pytest.raises(ValueError, match="model_type is 'eurobert', not 'qwen3'"):
        LLM(str(path), dtype="float32")


def test_server_picks_the_task_by_model_name(jina_v5, llm):
    path, models = jina_v5
    with cenote_serve([str(path), "--served-model-name", "jina", "--dtype", "float32",
                       "--enable-lora", "--max-loras", "2"]) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        for name in ("retrieval", "text-matching", "jina"):
            data = client.embeddings.create(model=name, input=TEXTS, encoding_format="float").data
            got = torch.tensor([d.embedding for d in data])
            expected = _last_token(models["base" if name == "jina" else name], llm.embed(TEXTS))
            assert F.cosine_similarity(got, expected).min() >= 0.9999
        assert {"retrieval", "text-matching"} <= {m.id for m in client.models.list().data}
        with pytest.raises(openai.NotFoundError, match="The model `classification` does not"):
            client.embeddings.create(model="classification", input="hi")


def test_task_adapter_discovery_rules(tmp_path):
    """Ids after --lora-modules' in path order, a --lora-modules name wins, two levels deep
    at most, duplicate names refused, nothing added without --enable-lora."""
    from cenote.config.lora import LoRAOptions
    from cenote.config.task_adapters import with_task_adapters

    for folder in ("adapters/retrieval", "clustering", "adapters/deep/x/too-deep"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "adapter_config.json").write_text("{}")
    assert with_task_adapters(LoRAOptions(), tmp_path) == LoRAOptions()
    mine = LoRARequest("clustering", 1, "/elsewhere")
    options = with_task_adapters(LoRAOptions(True, max_loras=2, modules=(mine,)), tmp_path)
    assert options.modules == (mine, LoRARequest("retrieval", 2, str(tmp_path / "adapters"
                                                                      / "retrieval")))
    (tmp_path / "adapters" / "clustering").mkdir()
    (tmp_path / "adapters" / "clustering" / "adapter_config.json").write_text("{}")
    with pytest.raises(LoRAError, match="Two task adapters .* named 'clustering'"):
        with_task_adapters(LoRAOptions(True, max_loras=4), tmp_path)
