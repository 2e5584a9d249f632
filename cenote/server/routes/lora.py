"""Loading and unloading LoRA adapters at run time, as vLLM: ``POST /v1/load_lora_adapter``
and ``/v1/unload_lora_adapter``. Off unless the server runs with ``--enable-lora`` and
the environment has ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (without it vLLM does not
register the routes: 404)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.engine.lora import LoRANotFoundError
from cenote.server.context import ServerContext, get_context
from cenote.server.errors import APIError
from cenote.server.protocol_lora import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

router = APIRouter()

RUNTIME_UPDATES = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def _lora_engine(ctx: ServerContext) -> AsyncPoolingEngine:
    """The engine adapters load into (the first model served); 404 without
    VLLM_ALLOW_RUNTIME_LORA_UPDATING, 400 without --enable-lora."""
    if os.environ.get(RUNTIME_UPDATES, "").strip().lower() not in ("1", "true"):
        raise StarletteHTTPException(404, f"Not Found: loading LoRA adapters at run time is "
                                          f"off; set {RUNTIME_UPDATES}=True (and start the "
                                          "server with --enable-lora) to allow it.")
    engine = ctx.models[0].engine
    if not engine.loras.enabled:
        raise ValueError("LoRA is not enabled: start the server with --enable-lora to load "
                         "adapters.")
    return engine


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRAAdapterRequest,
                            ctx: ServerContext = Depends(get_context)) -> Response:
    engine = _lora_engine(ctx)
    if not body.lora_name or not body.lora_path:
        raise ValueError("Both 'lora_name' and 'lora_path' must be provided.")
    if any(body.lora_name in model.names for model in ctx.models):
        raise ValueError(f"The lora adapter name '{body.lora_name}' is the name of a served "
                         "model; give the adapter a name of its own.")
    if not Path(body.lora_path).exists():
        raise APIError(404, f"No adapter found at lora_path '{body.lora_path}'.")
    await engine.load_lora(body.lora_name, body.lora_path, replace=body.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest,
                              ctx: ServerContext = Depends(get_context)) -> Response:
    engine = _lora_engine(ctx)
    if not body.lora_name:
        raise ValueError("'lora_name' must be provided.")
    try:
        await engine.unload_lora(body.lora_name)
    except LoRANotFoundError as exc:
        raise APIError(404, str(exc)) from exc
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
