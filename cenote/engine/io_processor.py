"""IO processor plugins (vLLM's ``--io-processor-plugin``): code of the user's that turns
a request's free-form ``data`` into prompts and the pooled outputs back into an answer of
its own shape, around the engine (``task: "plugin"`` on ``/pooling``,
``LLM.encode(..., pooling_task="plugin")``).

A plugin is a class taking ``(model_config, tokenizer)``, found by name through the entry
point groups ``cenote.io_processor_plugins`` and ``vllm.io_processor_plugins`` (as in
vLLM, an entry point may give the class, or a function returning the class or its dotted
name), or given directly as ``package.module:Class``. cenote's interface is vLLM's, with
one difference: a plugin names the pooling tasks its prompts run (``pooling_tasks``), and
``post_process`` receives the outputs of each by task, where vLLM's plugins ask for one
combined task (``embed&token_classify``) and receive one list.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from cenote.config import ModelConfig
from cenote.inputs.prompts import Prompt
from cenote.outputs import PoolingRequestOutput
from cenote.params import PoolingParams

ENTRY_POINT_GROUPS = ("cenote.io_processor_plugins", "vllm.io_processor_plugins")
# vLLM's answer to task "plugin" on a server or LLM without a plugin.
NO_IO_PROCESSOR_PLUGIN = ("No IOProcessor plugin installed. Please refer to the documentation "
                          "and to the 'prithvi_geospatial_mae_io_processor' offline inference "
                          "example for more details.")

IOProcessorInput = TypeVar("IOProcessorInput")
IOProcessorOutput = TypeVar("IOProcessorOutput")


class IOProcessor(ABC, Generic[IOProcessorInput, IOProcessorOutput]):
    """Pre- and post-processing around the engine for ``task: "plugin"`` requests."""

    # The pooling tasks each of the plugin's prompts runs (each its own pass).
    pooling_tasks: tuple[str, ...] = ("embed",)

    def __init__(self, model_config: ModelConfig, tokenizer: Any) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer

    def parse_data(self, data: object) -> IOProcessorInput:
        """The request's ``data`` checked and typed (``ValueError``/``TypeError``: 400)."""
        raise NotImplementedError

    def merge_pooling_params(self, params: PoolingParams | None = None) -> PoolingParams:
        """The pooling parameters the prompts run with."""
        return params or PoolingParams()

    @abstractmethod
    def pre_process(self, prompt: IOProcessorInput, request_id: str | None = None,
                    **kwargs: Any) -> Prompt | Sequence[Prompt]:
        """The prompts to run for one request."""

    @abstractmethod
    def post_process(self, model_output: Mapping[str, Sequence[PoolingRequestOutput]],
                     request_id: str | None = None, **kwargs: Any) -> IOProcessorOutput:
        """The answer, from each pooling task's outputs (in prompt order)."""


def load_io_processor(name: str, model_config: ModelConfig, tokenizer: Any) -> IOProcessor:
    """The plugin called ``name`` (an entry point's name, or ``module:Class``), made for
    this model; ``ValueError`` naming the plugins there are when none matches."""
    found = [ep for group in ENTRY_POINT_GROUPS for ep in entry_points(group=group)
             if ep.name == name]
    if found:
        target = found[0].load()
        if not isinstance(target, type):  # vLLM's form: a function giving the class
            target = target()
    elif ":" in name:
        target = name
    else:
        known = sorted({ep.name for group in ENTRY_POINT_GROUPS
                        for ep in entry_points(group=group)})
        raise ValueError(f"No IO processor plugin named {name!r}; installed: "
                         f"{', '.join(known) or 'none'} (or give module:Class).")
    if isinstance(target, str):
        module, _, attribute = target.replace(":", ".").rpartition(".")
        target = getattr(importlib.import_module(module), attribute)
    if not (isinstance(target, type) and issubclass(target, IOProcessor)):
        raise ValueError(f"IO processor plugin {name!r} is not a cenote IOProcessor class.")
    return target(model_config, tokenizer)


def plugin_prompts(processor: IOProcessor, data: object, request_id: str | None = None
                   ) -> tuple[list[Prompt], PoolingParams]:
    """A request's ``data`` as the prompts to run and their parameters."""
    prompts = processor.pre_process(processor.parse_data(data), request_id=request_id)
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    return list(prompts), processor.merge_pooling_params(None)
