"""LoRA adapters on the native families match PEFT on the same weights; one batch mixes
adapters and the base; what cannot be served is refused with a clear message."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from cenote import LLM, LoRARequest
from cenote.config.lora import LoRAError
from tests.lora_factories import build_adapter, edit_adapter_config

TEXTS = ["hello world", "a somewhat longer sentence about search engines and ranking", "x",
         "the quick brown fox jumps over the lazy dog " * 3]
BERT_TARGETS = [["query", "value", "attention.output.dense"], ["key", "intermediate.dense"],
                ["query", "key", "value", "output.dense"]]
DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _vectors(outs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outs])


@torch.no_grad()
def _mean_pooled(model, tokenizer) -> torch.Tensor:
    rows = []
    for text in TEXTS:
        hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        rows.append(F.normalize(hidden.mean(0), dim=-1))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def minilm_adapters(minilm_path, tmp_path_factory):
    """Three adapters on MiniLM (one rsLoRA) and PEFT's embeddings with each."""
    import transformers

    base = transformers.AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    folder = tmp_path_factory.mktemp("minilm-adapters")
    requests, references = [], []
    for i, targets in enumerate(BERT_TARGETS):
        path = folder / f"a{i + 1}"
        adapted = build_adapter(base, path, targets, seed=i, use_rslora=i == 1)
        requests.append(LoRARequest(f"a{i + 1}", i + 1, str(path)))
        references.append(_mean_pooled(adapted, tokenizer))
    return requests, references, _mean_pooled(base, tokenizer)


@pytest.fixture(scope="module")
def minilm_lora(minilm_path):
    return LLM(str(minilm_path), dtype="float32", enable_lora=True, max_loras=3,
               max_lora_rank=8)


def test_bert_adapters_match_peft(minilm_lora, minilm_adapters):
    requests, references, base = minilm_adapters
    assert F.cosine_similarity(_vectors(minilm_lora.embed(TEXTS)), base).min() >= 0.9999
    for request, reference in zip(requests, references, strict=True):
        ours = _vectors(minilm_lora.embed(TEXTS, lora_request=request))
        assert F.cosine_similarity(ours, reference).min() >= 0.9999
        assert F.cosine_similarity(ours, base).min() < 0.99  # the adapter does change it


def test_one_batch_mixes_adapters_and_the_base(minilm_lora, minilm_adapters):
    requests = minilm_adapters[0]
    per_prompt = [requests[0], None, requests[2], requests[1]]
    mixed = _vectors(minilm_lora.embed(TEXTS, lora_request=per_prompt))
    for i, request in enumerate(per_prompt):
        alone = _vectors(minilm_lora.embed([TEXTS[i]], lora_request=request))[0]
        assert torch.allclose(mixed[i], alone, atol=1e-5)


def test_score_goes_through_the_adapter(minilm_lora, minilm_adapters):
    requests, references, base = minilm_adapters
    (adapted,) = minilm_lora.score(TEXTS[0], TEXTS[1], lora_request=requests[0])
    (plain,) = minilm_lora.score(TEXTS[0], TEXTS[1])
    expected = F.cosine_similarity(references[0][0], references[0][1], dim=0).item()
    assert adapted.outputs.score == pytest.approx(expected, abs=1e-4)
    assert plain.outputs.score != pytest.approx(expected, abs=1e-3)


def test_sequence_classifier_adapter_matches_peft(tiny_bert_classifier, tmp_path):
    import transformers

    path = tiny_bert_classifier("bert", num_labels=3)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, dtype=torch.float32).eval()
    adapted = build_adapter(base, tmp_path / "cls", ["query", "value", "intermediate.dense"], 7)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    llm = LLM(str(path), dtype="float32", enable_lora=True)
    outs = llm.classify(TEXTS, lora_request=LoRARequest("cls", 1, str(tmp_path / "cls")))
    with torch.no_grad():
        expected = torch.stack([adapted(**tokenizer(t, return_tensors="pt")).logits[0].softmax(-1)
                                for t in TEXTS])
    ours = torch.tensor([o.outputs.probs for o in outs])
    assert torch.allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("targets", [DECODER_TARGETS, ["q_proj", "v_proj", "up_proj"],
                                     ["k_proj", "gate_proj"]])
def test_qwen3_adapters_match_peft(targets, tiny_decoder, tmp_path):
    """Every projection, and parts of the fused q/k/v (GQA: k, v narrower than q) and
    gate/up alone."""
    import transformers

    path = tiny_decoder("qwen3", "Qwen3Model")
    base = transformers.Qwen3Model.from_pretrained(path, dtype=torch.float32).eval()
    adapted = build_adapter(base, tmp_path / "qwen", targets, seed=3, r=6, lora_alpha=12)
    llm = LLM(str(path), dtype="float32", enable_lora=True)
    outs = llm.embed(TEXTS, lora_request=LoRARequest("q", 1, str(tmp_path / "qwen")))
    with torch.no_grad():
        reference = torch.stack([
            F.normalize(adapted(input_ids=torch.tensor([o.prompt_token_ids]))
                        .last_hidden_state[0, -1], dim=-1) for o in outs])
    ours = _vectors(outs)
    assert F.cosine_similarity(ours, reference).min() >= 0.9999
    assert F.cosine_similarity(ours, _vectors(llm.embed(TEXTS))).min() < 0.99


def test_modernbert_adapter_matches_peft(minilm_path, tmp_path):
    import transformers

    from tests.test_modernbert import build_tiny_modernbert

    path = build_tiny_modernbert(minilm_path, tmp_path / "mb", "ModernBertModel")
    base = transformers.ModernBertModel.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa").eval()
    adapted = build_adapter(base, tmp_path / "a", ["Wqkv", "attn.Wo", "Wi", "mlp.Wo"], seed=5)
    llm = LLM(str(path), dtype="float32", enable_lora=True)
    outs = llm.embed(TEXTS, lora_request=LoRARequest("m", 1, str(tmp_path / "a")))
    with torch.no_grad():
        reference = torch.stack([
            F.normalize(adapted(input_ids=torch.tensor([o.prompt_token_ids]))
                        .last_hidden_state[0, 0], dim=-1) for o in outs])
    assert F.cosine_similarity(_vectors(outs), reference).min() >= 0.9999


def test_gemma3_adapter_matches_peft_on_every_token(minilm_path, tmp_path):
    """Bidirectional Gemma3 (EmbeddingGemma's body): every token's row, through ``encode``."""
    import transformers

    from tests.factories import _save_tokenizer, _widen_
    from tests.test_bidirectional_decoders import GEMMA3

    torch.manual_seed(5)
    config = transformers.Gemma3TextConfig(**GEMMA3, use_bidirectional_attention=True)
    base = transformers.Gemma3TextModel(config)
    _widen_(base, 0.1)
    base.save_pretrained(tmp_path / "gemma")
    _save_tokenizer(minilm_path, tmp_path / "gemma")
    adapted = build_adapter(base.eval(), tmp_path / "a", DECODER_TARGETS, seed=2)
    llm = LLM(str(tmp_path / "gemma"), dtype="float32", enable_lora=True)
    outs = llm.encode(TEXTS, lora_request=LoRARequest("g", 1, str(tmp_path / "a")))
    for out in outs:
        with torch.no_grad():
            expected = adapted(input_ids=torch.tensor([out.prompt_token_ids])).last_hidden_state[0]
        assert F.cosine_similarity(out.outputs.data, expected).min() >= 0.9999


def test_default_dtype_stays_close_to_peft(minilm_path, minilm_adapters):
    requests, references, _ = minilm_adapters
    llm = LLM(str(minilm_path), enable_lora=True)
    ours = _vectors(llm.embed(TEXTS, lora_request=requests[0]))
    assert F.cosine_similarity(ours, references[0]).min() >= 0.998


# ---- what is refused ----------------------------------------------------------------------

def test_rank_above_max_lora_rank_names_both(minilm_path, minilm_adapters):
    llm = LLM(str(minilm_path), enable_lora=True, max_lora_rank=2)
    with pytest.raises(LoRAError, match="rank 4 is greater than max_lora_rank 2"):
        llm.embed("hi", lora_request=minilm_adapters[0][0])


def test_more_adapters_than_max_loras_is_refused(minilm_path, minilm_adapters):
    requests = minilm_adapters[0]
    llm = LLM(str(minilm_path), enable_lora=True, max_loras=1)
    llm.embed("hi", lora_request=requests[0])
    with pytest.raises(LoRAError, match=r"--max-loras \(1\)"):
        llm.embed("hi", lora_request=requests[1])
    llm.embed("hi", lora_request=requests[0])  # the loaded one still serves


def test_adapter_while_lora_is_disabled(minilm_fp32, minilm_adapters):
    with pytest.raises(LoRAError, match="LoRA is not enabled"):
        minilm_fp32.embed("hi", lora_request=minilm_adapters[0][0])


@pytest.fixture(scope="module")
def minilm_checks(minilm_path):
    """An engine that the refusals below leave as it was (each refused load loads nothing)."""
    return LLM(str(minilm_path), dtype="float32", enable_lora=True, max_loras=8,
               max_lora_rank=8)


def test_adapter_of_another_base_names_both(minilm_checks, minilm_path, tiny_decoder, tmp_path):
    import transformers

    path = tiny_decoder("qwen3", "Qwen3Model")
    base = transformers.Qwen3Model.from_pretrained(path, dtype=torch.float32)
    build_adapter(base, tmp_path / "qwen", ["q_proj"], seed=0)
    with pytest.raises(LoRAError, match=rf"was trained for {path}, which does not match the "
                                        rf"served model {minilm_path}: it adapts "):
        minilm_checks.embed("hi", lora_request=LoRARequest("other", 9, str(tmp_path / "qwen")))


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "does not yet support DoRA"),
    ({"modules_to_save": ["classifier"]}, "Unsupported modules_to_save"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
    ({"bias": "all"}, "trains biases"),
    ({"peft_type": "IA3"}, "only LoRA adapters"),
])
def test_unsupported_adapters_are_named(change, message, minilm_checks, minilm_adapters,
                                        tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(minilm_adapters[0][0].lora_path, folder)
    edit_adapter_config(folder, **change)
    with pytest.raises(LoRAError, match=message):
        minilm_checks.embed("hi", lora_request=LoRARequest("bad", 50, str(folder)))


def test_a_folder_without_an_adapter_is_named(minilm_checks, tmp_path):
    with pytest.raises(LoRAError, match="is not a PEFT adapter folder"):
        minilm_checks.embed("hi", lora_request=LoRARequest("none", 51, str(tmp_path)))


def test_lora_modules_flag_forms_and_mistakes():
    from cenote.arguments import build_parser
    from cenote.launch import lora_options

    args = build_parser().parse_args([
        "serve", "m", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",
        "--lora-modules", "a=/x/a", '{"name": "b", "path": "/x/b", "base_model_name": "m"}'])
    options = lora_options(args)
    assert (options.enabled, options.max_loras, options.max_lora_rank) == (True, 2, 32)
    assert options.modules == (LoRARequest("a", 1, "/x/a"), LoRARequest("b", 2, "/x/b", "m"))
    for argv, message in [
        (["--lora-modules", "a=/x"], "needs --enable-lora"),
        (["--enable-lora", "--lora-modules", "a=/x", "b=/y"], "raise --max-loras to at least 2"),
        (["--enable-lora", "--lora-modules", "just-a-name"], "expected name=path"),
        (["--enable-lora", "--lora-modules", '{"name": "a"}'], 'needs "name" and "path"'),
    ]:
        with pytest.raises(LoRAError, match=message):
            lora_options(build_parser().parse_args(["serve", "m", *argv]))


def test_an_unloaded_adapters_id_is_never_reused(minilm_checks, minilm_adapters):
    """Unload the newest adapter and load another: the new one gets a new id, so a request
    still queued with the old id is refused as not loaded instead of running through it."""
    from cenote.engine.lora import with_adapters

    requests = minilm_adapters[0]
    engine = minilm_checks.engine
    first = engine.loras.load("reuse-1", requests[0].lora_path)
    second = engine.loras.load("reuse-2", requests[1].lora_path)
    queued = with_adapters(engine.prepare(["hi"], "embed"), [second.lora_int_id])
    engine.loras.remove("reuse-2")
    third = engine.loras.load("reuse-3", requests[2].lora_path)
    try:
        assert third.lora_int_id > second.lora_int_id > first.lora_int_id
        with pytest.raises(LoRAError, match=rf"\[{second.lora_int_id}\]\) are not loaded"):
            engine.run(queued, "embed")
    finally:
        engine.loras.remove("reuse-1")
        engine.loras.remove("reuse-3")


def test_threads_resolving_one_request_load_it_once(minilm_checks, minilm_adapters,
                                                     monkeypatch):
    """Two threads asking for the same offline adapter at once: both get its id (the
    lookup and the load are one step, not 'already been loaded' for the slower one)."""
    import threading

    registry = minilm_checks.engine.loras
    barrier = threading.Barrier(2, timeout=1)

    class LookupsMeet(dict):  # each lookup waits for the other thread's (1 s at most)
        def get(self, key, default=None):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
            return super().get(key, default)

    monkeypatch.setattr(registry, "_by_name", LookupsMeet(registry._by_name))
    request = LoRARequest("raced", 60, minilm_adapters[0][0].lora_path)
    results, errors = [], []

    def resolve() -> None:
        try:
            results.append(registry.resolve(request))
        except LoRAError as error:
            errors.append(error)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and results == [60, 60]
    finally:
        registry.remove("raced")


def test_a_bool_is_not_an_adapter_id():
    for flag in (True, False):
        with pytest.raises(LoRAError, match="lora_int_id must be a positive integer"):
            LoRARequest("a", flag, "/x")
    assert LoRARequest("a", 1, "/x").lora_int_id == 1


def test_rows_mismatch_error_names_no_internal_file():
    """A layer that saw fewer rows than the batch: the message says what happened and
    what to do, and names no file of the developers'."""
    from cenote.models.lora import LinearLoRA, LoRARows

    rows = LoRARows()
    rows.groups, rows.num_rows = [(1, 0, 4)], 4
    with pytest.raises(RuntimeError) as caught:
        LinearLoRA(rows).add_to(torch.zeros(3, 2), torch.zeros(3, 2))
    message = str(caught.value)
    assert "computed 3 rows of a batch of 4" in message and "report" in message
    assert "/tmp" not in message and "notes" not in message


def test_late_chunking_through_an_adapter_is_refused(minilm_lora, minilm_adapters):
    from cenote import LateChunkingParams, PoolingParams, VLLMValidationError

    requests, _, _ = minilm_adapters
    params = PoolingParams(late_chunking_params=LateChunkingParams(chunk_size=4))
    with pytest.raises(VLLMValidationError, match="Late chunking does not support LoRA"):
        minilm_lora.encode(TEXTS[0], params, pooling_task="token_embed",
                           lora_request=requests[0])
    # The base model still chunks.
    (base,) = minilm_lora.encode(TEXTS[0], params, pooling_task="token_embed")
    assert base.outputs.data.shape[0] >= 1
