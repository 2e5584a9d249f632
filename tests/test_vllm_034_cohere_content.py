"""Cohere ``/v2/embed`` content parts are checked as vLLM 0.34 checks them: a text part
needs its text, an image part a non-empty ``image_url.url`` (a validation error, so a
400 over HTTP)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cenote.server.protocol_cohere import CohereEmbedRequest


@pytest.mark.parametrize("content, error", [
    ({"type": "text"}, "CohereEmbedContent with type='text' requires text"),
    ({"type": "image_url"}, "CohereEmbedContent with type='image_url' requires image_url.url"),
    ({"type": "image_url", "image_url": {}},
     "CohereEmbedContent with type='image_url' requires image_url.url"),
    ({"type": "image_url", "image_url": {"url": ""}},
     "CohereEmbedContent with type='image_url' requires image_url.url"),
])
def test_a_content_part_without_its_payload_is_a_validation_error(content, error):
    with pytest.raises(ValidationError, match=error):
        CohereEmbedRequest(model="m", inputs=[{"content": [content]}])


def test_a_content_part_with_its_payload_is_accepted():
    request = CohereEmbedRequest(model="m", inputs=[{"content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert len(request.inputs[0].content) == 2
