from types import SimpleNamespace

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

global_http_connection = SimpleNamespace(reuse_client=False)
