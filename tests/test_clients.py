"""docs/clients.md, run: each snippet against a real ``cenote serve`` with its client
library from PyPI (openai sync and async, cohere v1 and v2, LangChain, LlamaIndex,
LiteLLM, Haystack, chromadb, huggingface_hub), and its ``vectors`` are what
``LLM.embed`` gives its ``texts``. The page's trap too: token ids from another
vocabulary get a 400 that says how to send texts from LangChain."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cenote import LLM
from tests.serving import cenote_serve
from tests.test_docs_examples import ROOT, CodeBlock, code_blocks, served_here

PAGE = ROOT / "docs" / "clients.md"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the bundled model's served name


def client_snippets() -> list[tuple[str, CodeBlock]]:
    """The page's python blocks, each named after the section it is in."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    named = []
    for block in code_blocks(PAGE):
        if block.language != "python":
            continue
        heading = next(line for line in reversed(lines[:block.line]) if line.startswith("## "))
        named.append((re.sub(r"\W+", "-", heading[3:].lower()).strip("-"), block))
    return named


SNIPPETS = client_snippets()


@pytest.fixture(scope="module")
def server():
    with cenote_serve([]) as process:  # no MODEL: the bundled all-MiniLM-L6-v2
        yield process


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM()


def test_the_page_has_a_snippet_for_every_client_library():
    assert [name for name, _ in SNIPPETS] == [
        "openai", "openai-async", "cohere-v2", "cohere-v1", "langchain", "llamaindex",
        "litellm", "haystack", "chromadb", "huggingface_hub"]
    # test_docs_examples leaves them to this module.
    assert all(block.skip_reason and "test_clients.py" in block.skip_reason
               for _, block in SNIPPETS)


@pytest.mark.parametrize("block", [block for _, block in SNIPPETS],
                         ids=[name for name, _ in SNIPPETS])
def test_the_snippet_gets_llm_embed_vectors_from_cenote_serve(block, server, llm,
                                                             monkeypatch):
    from huggingface_hub import constants

    # The suite runs with HF_HUB_OFFLINE=1, which makes InferenceClient refuse every
    # URL (the page says so); the other clients ignore it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    namespace = {"__name__": "__clients_example__"}
    code = compile("\n" * block.line + served_here(block.source, server), str(PAGE), "exec")
    exec(code, namespace)
    texts, vectors = namespace["texts"], namespace["vectors"]
    expected = [o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)]
    np.testing.assert_allclose(np.array(vectors, dtype=np.float32),
                               np.array(expected, dtype=np.float32), rtol=0, atol=1e-5)


def test_token_ids_past_the_vocabulary_get_a_400_naming_langchains_setting(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    # What LangChain's default sends: tiktoken (cl100k) ids; 100264 is past MiniLM's 30522.
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input=[[791, 13180, 374, 100264]])
    assert "check_embedding_ctx_length=False" in str(refused.value)
