from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

# Where vLLM keeps its test media; unreachable offline, so tests needing it cannot run.
VLLM_S3_BUCKET_URL = "https://vllm-public-assets.s3.us-west-2.amazonaws.com"
