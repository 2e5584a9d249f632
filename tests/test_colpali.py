"""Visual document retrievers (ColQwen2): one vector per token or image patch, parity with
transformers' ColQwen2ForRetrieval fed by its own ColQwen2Processor on a tiny random
checkpoint, and MaxSim scoring of text queries against image documents (and back)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cenote import LLM, PoolingParams
from tests.colpali_factories import build_tiny_colpali, build_tiny_colqwen2


@pytest.fixture(scope="module")
def colqwen2(tmp_path_factory):
    return build_tiny_colqwen2(tmp_path_factory.mktemp("colqwen2"))


@pytest.fixture(scope="module")
def llm(colqwen2):
    return LLM(str(colqwen2), dtype="float32")


@pytest.fixture(scope="module")
def reference(colqwen2):
    from transformers import ColQwen2ForRetrieval, ColQwen2Processor

    model = ColQwen2ForRetrieval.from_pretrained(colqwen2, dtype=torch.float32).eval()
    return model, ColQwen2Processor.from_pretrained(colqwen2)


def page(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def image_prompt(image: Image.Image) -> dict:
    return {"prompt": "", "multi_modal_data": {"image": image}}


def transformers_vectors(reference, *, images=None, queries=None) -> list[torch.Tensor]:
    """Each input's vectors from transformers (one at a time: no padding rows)."""
    model, processor = reference
    out = []
    for item in images or queries:
        batch = (processor.process_images(images=[item]) if images
                 else processor.process_queries(text=[item]))
        with torch.no_grad():
            out.append(model(**batch).embeddings[0])
    return out


def test_image_and_query_vectors_match_transformers(llm, reference):
    pages = [page(56, 84, 0), page(112, 56, 1)]
    queries = ["what is the revenue?", "a chart"]
    ours = llm.encode([image_prompt(p) for p in pages], pooling_task="token_embed")
    ours += llm.encode(queries, pooling_task="token_embed",
                       pooling_params=PoolingParams(embedding_mode="query"))
    theirs = (transformers_vectors(reference, images=pages)
              + transformers_vectors(reference, queries=queries))
    for o, t in zip(ours, theirs, strict=True):
        assert o.outputs.data.shape == t.shape
        torch.testing.assert_close(o.outputs.data, t, atol=2e-5, rtol=1e-4)


def test_colqwen2_5_vectors_match_transformers(tmp_path):
    """ColQwen2.5: the same class with a Qwen2.5-VL backbone (its own vision tower)."""
    from transformers import ColQwen2ForRetrieval, ColQwen2Processor

    folder = build_tiny_colqwen2(tmp_path / "colqwen2.5", backbone="2.5")
    llm = LLM(str(folder), dtype="float32")
    reference = (ColQwen2ForRetrieval.from_pretrained(folder, dtype=torch.float32).eval(),
                 ColQwen2Processor.from_pretrained(folder))
    assert reference[0].config.vlm_config.model_type == "qwen2_5_vl"
    pages = [page(112, 84, 20)]
    ours = llm.encode([image_prompt(p) for p in pages], pooling_task="token_embed")
    ours += llm.encode(["a query"], pooling_task="token_embed",
                       pooling_params=PoolingParams(embedding_mode="query"))
    theirs = (transformers_vectors(reference, images=pages)
              + transformers_vectors(reference, queries=["a query"]))
    for o, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(o.outputs.data, t, atol=2e-5, rtol=1e-4)


def test_score_text_queries_against_page_images_is_maxsim(llm, reference):
    model, processor = reference
    pages = [page(56, 56, 2), page(84, 56, 3), page(56, 112, 4)]
    query = "quarterly results table"
    scores = [o.outputs.score for o in llm.score(query, [image_prompt(p) for p in pages])]
    q = processor.process_queries(text=[query])
    with torch.no_grad():
        q_vectors = model(**q).embeddings
        expected = [processor.score_retrieval(q_vectors,
                                              transformers_vectors(reference, images=[p]))
                    .item() for p in pages]
    assert scores == pytest.approx(expected, rel=1e-4)


def test_image_query_against_text_documents(llm):
    image = page(56, 56, 5)
    documents = ["first document", "second one"]
    scores = [o.outputs.score for o in llm.score(image_prompt(image), documents)]
    query = llm.encode([image_prompt(image)], pooling_task="token_embed")[0].outputs.data
    docs = llm.encode(documents, pooling_task="token_embed")
    expected = [(query @ d.outputs.data.T).amax(dim=1).sum().item() for d in docs]
    assert scores == pytest.approx(expected, rel=1e-5)


def test_refusals(llm):
    with pytest.raises(ValueError, match="one image"):
        llm.score("q", [{"prompt": "", "multi_modal_data": {"image": [page(56, 56, 0)] * 2}}])
    with pytest.raises(ValueError, match="not videos"):
        llm.score("q", [{"prompt": "", "multi_modal_data": {"video": [np.zeros((2, 56, 56, 3),
                                                                              np.uint8)]}}])
    with pytest.raises(Exception, match="not supported"):
        llm.encode(["a text"], pooling_task="embed")


def readme_example() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "colqwen2" in b]
    return block


def test_readme_page_search_example_runs(colqwen2, tmp_path, monkeypatch, capsys):
    (tmp_path / "pages").mkdir()
    for i in range(4):
        page(56 + 28 * i, 84, 10 + i).save(tmp_path / "pages" / f"p{i}.png")
    monkeypatch.chdir(tmp_path)
    exec(readme_example().replace("vidore/colqwen2-v1.0-hf", str(colqwen2)), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.split()[1].startswith("pages/p") for line in lines)
    printed = [float(line.split()[0]) for line in lines]
    assert printed == sorted(printed, reverse=True)


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    return build_tiny_colpali(tmp_path_factory.mktemp("colpali"))


def test_colpali_vectors_and_scores_match_transformers(colpali):
    """ColPali (PaliGemma) on transformers' own class, fed as its ColPaliProcessor feeds it:
    the vectors of pages and queries in one batch, and MaxSim as score_retrieval."""
    from transformers import ColPaliForRetrieval, ColPaliProcessor

    llm = LLM(str(colpali), dtype="float32")
    reference = (ColPaliForRetrieval.from_pretrained(colpali, dtype=torch.float32).eval(),
                 ColPaliProcessor.from_pretrained(colpali))
    pages = [page(56, 84, 30), page(40, 40, 31)]
    queries = ["what is shown?", "total"]
    prompts = [image_prompt(p) for p in pages] + queries
    params = [PoolingParams()] * 2 + [PoolingParams(embedding_mode="query")] * 2
    ours = llm.encode(prompts, pooling_task="token_embed", pooling_params=params)
    theirs = (transformers_vectors(reference, images=pages)
              + transformers_vectors(reference, queries=queries))
    for o, t in zip(ours, theirs, strict=True):
        assert o.outputs.data.shape == t.shape
        torch.testing.assert_close(o.outputs.data, t, atol=2e-5, rtol=1e-4)
    scores = [o.outputs.score for o in llm.score(queries[0], [image_prompt(p) for p in pages])]
    model, processor = reference
    expected = processor.score_retrieval(theirs[2][None], theirs[:2]).float()[0].tolist()
    assert scores == pytest.approx(expected, rel=1e-4)


def test_a_colpali_page_costs_its_vision_tower_tokens(colpali):
    """A page is charged to its batch as the SigLIP tower's patches, not as one row of
    pixel_values (the image count)."""
    from transformers import ColPaliForRetrieval, ColPaliProcessor

    llm = LLM(str(colpali), dtype="float32")
    (record,) = llm.engine.images.records([image_prompt(page(56, 84, 30))], "token_embed",
                                          [None])
    model = ColPaliForRetrieval.from_pretrained(colpali, dtype=torch.float32).eval()
    pixels = ColPaliProcessor.from_pretrained(colpali).process_images(
        images=[page(56, 84, 30)])["pixel_values"]
    with torch.no_grad():
        tower = model.vlm.vision_tower(pixels).last_hidden_state
    assert record.multimodal.patches == tower.shape[0] * tower.shape[1]
    assert record.cost == len(record.token_ids) + tower.shape[0] * tower.shape[1]


def test_score_takes_vllm_content_documents(llm):
    """vLLM's offline ``{"content": [...]}`` documents: an image_url data: URL, image_pil,
    text parts; each scored as the same image or text given directly."""
    import base64
    import io

    image = page(56, 84, 40)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    documents = [{"content": [{"type": "image_url", "image_url": {"url": url}}]},
                 {"content": [{"type": "image_pil", "image_pil": image}]},
                 {"content": [{"type": "text", "text": "a text page"}]}]
    scores = [o.outputs.score for o in llm.score("q", documents)]
    direct = [o.outputs.score for o in llm.score("q", [image_prompt(image), "a text page"])]
    assert scores == pytest.approx([direct[0], direct[0], direct[1]], rel=1e-5)
    with pytest.raises(ValueError, match="data: URL"):
        llm.score("q", {"content": [{"type": "image_url",
                                     "image_url": {"url": "https://example.com/p.png"}}]})
