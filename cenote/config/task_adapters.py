"""Task adapters shipped in a model's own folder (jina-embeddings-v5's): each PEFT adapter
in a subfolder, one or two levels down (``adapters/retrieval/adapter_config.json``), is
served as a LoRA adapter named after its subfolder, loaded at start like
``--lora-modules`` and bounded by the same limits (``--enable-lora``, ``--max-loras``,
``--max-lora-rank``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from cenote.config.lora import ADAPTER_CONFIG, LoRAError, LoRAOptions, LoRARequest

logger = logging.getLogger(__name__)

# adapter_config.json is looked for in <model>/*/ and <model>/*/*/.
TASK_ADAPTER_PATTERNS = (f"*/{ADAPTER_CONFIG}", f"*/*/{ADAPTER_CONFIG}")


def find_task_adapters(folder: Path) -> list[Path]:
    """The PEFT adapter folders in ``folder``'s subfolders, ordered by path."""
    return sorted({config.parent for pattern in TASK_ADAPTER_PATTERNS
                   for config in Path(folder).glob(pattern)})


def task_adapter_names(folder: Path, found: list[Path]) -> list[tuple[str, Path]]:
    """(name, folder) of each adapter in ``found``; LoRAError when two share a name."""
    by_name: dict[str, Path] = {}
    for adapter in found:
        if adapter.name in by_name:
            raise LoRAError(f"Two task adapters in {folder} are named {adapter.name!r} "
                            f"({by_name[adapter.name]} and {adapter}); rename one folder.")
        by_name[adapter.name] = adapter
    return list(by_name.items())


def with_task_adapters(options: LoRAOptions, folder: Path) -> LoRAOptions:
    """``options`` with the model folder's task adapters added to its modules (ids after
    the ``--lora-modules``' ones); unchanged without ``--enable-lora``. A
    ``--lora-modules`` adapter of the same name is served instead of the folder's."""
    found = find_task_adapters(folder)
    if not found:
        return options
    if not options.enabled:
        logger.info("%s ships task adapters (%s); start with --enable-lora --max-loras %d "
                    "(offline: enable_lora=True, max_loras=%d) to serve them.", folder,
                    ", ".join(str(p.relative_to(folder)) for p in found), len(found),
                    len(found))
        return options
    found = task_adapter_names(folder, found)
    taken = {module.lora_name for module in options.modules}
    first = max((module.lora_int_id for module in options.modules), default=0) + 1
    added = tuple(LoRARequest(name, first + i, str(path)) for i, (name, path)
                  in enumerate((n, p) for n, p in found if n not in taken))
    total = len(options.modules) + len(added)
    if total > options.max_loras:
        raise LoRAError(f"The model folder ships {len(added)} task adapters "
                        f"({', '.join(r.lora_name for r in added)})"
                        + (f" and --lora-modules gives {len(options.modules)}"
                           if options.modules else "")
                        + f", but --max-loras is {options.max_loras}: raise --max-loras to at "
                        f"least {total} (offline: max_loras={total}).")
    return replace(options, modules=options.modules + added)
