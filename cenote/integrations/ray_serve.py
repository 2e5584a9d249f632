"""Ray Serve: the HTTP API of ``cenote serve`` as a Serve application with N replicas.

    from ray import serve
    from cenote.integrations.ray_serve import build_app

    serve.run(build_app("BAAI/bge-small-en-v1.5", num_replicas=2), route_prefix="/")
    # then POST http://127.0.0.1:8000/v1/embeddings, as to cenote serve

Each replica loads the model into its own engine and answers with cenote's FastAPI
app (every route, error shape and metric of ``cenote serve``); Serve's proxy spreads
requests over the replicas. The app's lifespan, which Serve runs in each replica,
starts the engine and warms the model up before the replica takes traffic.

Nothing else in cenote imports this module; without Ray it raises an ImportError
that says ``pip install 'cenote[ray]'``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from cenote.integrations import import_ray, use_assigned_cpus
from cenote.launch import DEFAULT_MODEL_NAME, load_engine
from cenote.server.app import build_app as build_server_app
from cenote.server.context import ServerLimits

serve = import_ray("serve").serve


# Late-bound ingress: Serve asks __serve_build_asgi_app__ for the app once the
# constructor has loaded the model, then runs the app's lifespan (engine start, warm-up).
@serve.deployment
@serve.ingress()
class CenoteServer:
    """One replica: a model in its own engine behind cenote's HTTP app. Build it with
    :func:`build_app`."""

    def __init__(self, model: str | None, served_model_names: list[str],
                 model_options: dict[str, Any], app_options: dict[str, Any]) -> None:
        use_assigned_cpus()
        limits = app_options.get("limits") or ServerLimits()
        engine = load_engine(model, served_model_names[0], model_options,
                             request_timeout_s=limits.request_timeout_s)
        self._app = build_server_app(engine, served_model_names=served_model_names,
                                     **app_options)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app


def build_app(
    model: str | os.PathLike | None = None,
    *,
    num_replicas: int | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    served_model_name: str | list[str] | None = None,
    app_options: dict[str, Any] | None = None,
    **model_options: Any,
) -> serve.Application:
    """A Serve application that serves ``model`` as ``cenote serve`` does, for
    ``serve.run``.

    ``num_replicas`` (default 1) fixed replicas, or ``autoscaling_config`` (Serve's:
    ``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ...) instead.
    ``ray_actor_options`` are each replica's resources, by default
    ``{"num_cpus": 1}``: a replica's torch threads equal its CPUs. ``served_model_name``:
    the name(s) clients pass as ``model`` (default: ``model`` as given).
    ``app_options`` go to the HTTP app (``api_key``, ``limits``, ``allowed_origins``,
    ...); ``model_options`` to ``ModelConfig.from_args`` (``task``, ``dtype``,
    ``max_model_len``, ``max_num_batched_tokens``, ...).
    """
    if autoscaling_config is not None and num_replicas is not None:
        raise ValueError("Give num_replicas or autoscaling_config, not both.")
    names = ([served_model_name] if isinstance(served_model_name, str)
             else list(served_model_name or [str(model) if model else DEFAULT_MODEL_NAME]))
    scaling = ({"autoscaling_config": autoscaling_config} if autoscaling_config is not None
               else {"num_replicas": num_replicas or 1})
    deployment = CenoteServer.options(
        ray_actor_options=ray_actor_options or {"num_cpus": 1}, **scaling)
    return deployment.bind(str(model) if model is not None else None, names,
                           model_options, app_options or {})
