"""Ray: a dataset run through a pool of engine actors gets what one process's ``LLM``
gives every row, even when an actor dies mid-dataset; the Ray Serve application
answers as ``cenote serve`` does. One real local Ray cluster (two nodes on this
machine, one CPU each) serves the whole module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("ray.serve")

from cenote import LLM  # noqa: E402
from cenote.integrations.ray import (  # noqa: E402
    LLMPredictor,
    classify_dataset,
    embed_dataset,
    score_dataset,
)
from tests.serving import free_port  # noqa: E402

# Ray Data's own use of its deprecated settings, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["the weather", "a train timetable", "protein folding", "jazz harmony", "tax law",
          "sourdough bread", "volcanoes", "chess openings"]
# Rows of varied lengths, so batches mix short and long inputs.
TEXTS = [f"Note {i}: a few words about {TOPICS[i % len(TOPICS)]}" + " and more" * (i % 7)
         for i in range(40)]


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    # Workers import this module (the test UDFs below) from the repository root.
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def text_dataset(**columns: list):
    rows = [{"id": i, **{name: values[i] for name, values in columns.items()}}
            for i in range(len(next(iter(columns.values()))))]
    return ray.data.from_items(rows)


def by_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["id"])


@pytest.fixture(scope="module")
def minilm_embeddings(minilm_path) -> np.ndarray:
    outputs = LLM(str(minilm_path)).embed(TEXTS, use_tqdm=False)
    return np.array([o.outputs.embedding for o in outputs], dtype=np.float32)


def test_parquet_read_embedded_and_written_gets_llm_embed_vectors(ray_cluster, minilm_path,
                                                                  minilm_embeddings,
                                                                  tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "texts"
    source.mkdir()
    for part in range(2):  # two files: two read tasks
        rows = range(part * 20, part * 20 + 20)
        pq.write_table(pa.table({"id": list(rows), "text": [TEXTS[i] for i in rows]}),
                       source / f"part-{part}.parquet")
    # One actor of one CPU leaves the other CPU to the read and write tasks.
    ds = embed_dataset(ray.data.read_parquet(str(source)), minilm_path, concurrency=1,
                       num_cpus=1, batch_size=8)
    ds.write_parquet(str(tmp_path / "embedded"))
    table = pq.read_table(tmp_path / "embedded").sort_by("id")
    assert table["id"].to_pylist() == list(range(len(TEXTS)))
    assert table["text"].to_pylist() == TEXTS
    got = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, minilm_embeddings, rtol=0, atol=1e-5)


def test_a_pool_taking_every_cpu_is_refused_before_it_can_starve_the_reads(ray_cluster,
                                                                          minilm_path):
    ds = ray.data.from_items([{"text": "x"}])
    with pytest.raises(ValueError, match="reserve_cpus=1 for Ray Data's read and write"):
        embed_dataset(ds, minilm_path, concurrency=2, num_cpus=1)
    with pytest.raises(ValueError, match="wait forever"):
        embed_dataset(ds, minilm_path, concurrency=(2, 4), num_cpus=1)


def test_the_helpers_use_ray_datas_compute_argument_not_its_deprecated_concurrency(
        ray_cluster, minilm_path, capfd):
    ds = ray.data.from_items([{"text": "x"}])
    embed_dataset(ds, minilm_path, concurrency=1)
    embed_dataset(ds, minilm_path, concurrency=(1, 1))
    # Ray Data logs the deprecation to the driver's stderr when map_batches is called.
    assert "deprecated" not in capfd.readouterr().err


def test_embed_dataset_gives_every_row_what_llm_embed_gives(ray_cluster, minilm_path,
                                                            minilm_embeddings):
    # In memory (from_items): no read task needs a CPU, so the actors may take them all.
    ds = embed_dataset(text_dataset(text=TEXTS), minilm_path, concurrency=2, batch_size=8,
                       num_cpus=1, reserve_cpus=0)
    rows = by_id(ds.take_all())
    assert [row["id"] for row in rows] == list(range(len(TEXTS)))
    assert [row["text"] for row in rows] == TEXTS
    got = np.stack([row["embedding"] for row in rows])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, minilm_embeddings, rtol=0, atol=1e-5)


class ReportsItsThreads(LLMPredictor):
    """Adds the actor's torch threads to each row."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        out = super().__call__(batch)
        out["threads"] = np.full(len(batch["id"]), torch.get_num_threads())
        return out


class ExitsOnceMidDataset(ReportsItsThreads):
    """Kills its own process on the batch holding row ``crash_on_id``, the first time
    only (``marker`` remembers it across processes)."""

    def __init__(self, *, marker: str, crash_on_id: int, **options) -> None:
        super().__init__(**options)
        self.marker = Path(marker)
        self.crash_on_id = crash_on_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.crash_on_id in batch["id"] and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return super().__call__(batch)


def test_an_actor_killed_mid_dataset_loses_and_repeats_no_row(ray_cluster, minilm_path,
                                                              minilm_embeddings, tmp_path):
    marker = tmp_path / "crashed"
    ds = text_dataset(text=TEXTS).map_batches(
        ExitsOnceMidDataset, batch_size=4, compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
        fn_constructor_kwargs={"model": str(minilm_path), "marker": str(marker),
                               "crash_on_id": 21})
    # Ray Data's actor pools restart a lost actor and retry its batch by default
    # (max_restarts and max_task_retries -1), which is what the helpers rely on.
    rows = by_id(ds.take_all())
    assert marker.exists(), "the actor never crashed: the test proves nothing"
    assert [row["id"] for row in rows] == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.stack([row["embedding"] for row in rows]),
                               minilm_embeddings, rtol=0, atol=1e-5)
    # Each actor's torch threads equal its one CPU (the machine has more cores).
    assert {row["threads"] for row in rows} == {1}


def test_classify_dataset_gives_llm_classify_probs_and_labels(ray_cluster, classifier_path):
    ds = classify_dataset(text_dataset(text=TEXTS), classifier_path, concurrency=1,
                          batch_size=16, output_column="p", label_column="name")
    rows = by_id(ds.take_all())
    llm = LLM(str(classifier_path))
    expected = np.array([o.outputs.probs for o in llm.classify(TEXTS, use_tqdm=False)])
    np.testing.assert_allclose(np.stack([row["p"] for row in rows]), expected,
                               rtol=0, atol=1e-5)
    names = llm.config.id2label
    assert [row["name"] for row in rows] == [names[int(i)] for i in expected.argmax(axis=1)]


def test_score_dataset_gives_llm_score_of_each_rows_pair(ray_cluster, cross_encoder_path):
    queries = [f"what about {TOPICS[i % len(TOPICS)]}?" for i in range(len(TEXTS))]
    ds = score_dataset(text_dataset(query=queries, passage=TEXTS), cross_encoder_path,
                       text_column="query", text_pair_column="passage", concurrency=1,
                       batch_size=16)
    rows = by_id(ds.take_all())
    outputs = LLM(str(cross_encoder_path)).score(queries, TEXTS, use_tqdm=False)
    np.testing.assert_allclose([row["score"] for row in rows],
                               [o.outputs.score for o in outputs], rtol=0, atol=1e-5)


def test_ray_serve_app_answers_openai_embeddings_as_llm_embed(ray_cluster, minilm_path,
                                                             minilm_embeddings):
    import openai
    from ray import serve

    from cenote.integrations.ray_serve import build_app

    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(minilm_path, served_model_name="minilm"), name="cenote",
                  route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        answer = client.embeddings.create(model="minilm", input=TEXTS[:8])
        got = np.array([item.embedding for item in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, minilm_embeddings[:8], rtol=0, atol=1e-5)
        assert answer.model == "minilm"
    finally:
        serve.shutdown()


def test_import_cenote_does_not_import_ray():
    code = "import sys, cenote, cenote.integrations; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("module", ["cenote.integrations.ray", "cenote.integrations.ray_serve"])
def test_without_ray_the_integration_says_how_to_install_it(module):
    # sys.modules[name] = None makes ``import name`` fail as if it were not installed.
    code = (f"import sys; sys.modules['ray'] = None\n"
            f"try:\n    import {module}\n"
            f"except ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert "pip install 'cenote[ray]'" in done.stdout
