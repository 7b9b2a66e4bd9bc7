"""Caption refinement by a vision-language model, as the paper's LLaVA step (Sec. 3.3, Table 3).

Web captions often name what the image does not show; the paper rewrites them with LLaVA
before parsing entities (+2.8 mIoU on COCO in its Table 3). :class:`CaptionRefiner` sends the
image (a base64 ``data:`` URL, optionally downscaled) and its caption to an OpenAI-compatible
vision chat endpoint (:class:`uniovseg.data.chat_client.ChatClient`) with the prompt in
``uniovseg/data/prompts/caption_refinement.txt`` and returns the new caption, which
``tools/refine_captions.py`` writes as the manifest's ``refined_caption`` (stage 2 parses it
instead of the caption, ``INPUT.UNIOVSEG.CAPTION.USE_REFINED``). One image per request: vision
servers take few images per request and each answer is one caption. Answers are cached by
(image path, caption) in a :class:`~uniovseg.data.response_cache.ResponseCache`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import mimetypes

from PIL import Image

from .chat_client import ChatClient
from .prompts import load_prompt, prompt_sha256
from .response_cache import ResponseCache

__all__ = ["CaptionRefiner", "image_data_url", "parse_refined_caption"]

logger = logging.getLogger(__name__)

# An answer longer than this is not a caption (a model that went on talking): asked again.
MAX_CAPTION_CHARS = 1000


def image_data_url(path: str, *, max_side: int = 0) -> str:
    """An image file as a ``data:<mime>;base64,...`` URL.

    Args:
        path: The image file.
        max_side: When > 0 and the image's longer side is larger, it is resized to this and
            re-encoded as JPEG (smaller requests; vision encoders see ~336-1024 px anyway).

    Raises:
        OSError: The file cannot be read or decoded.
    """
    with open(path, "rb") as f:
        data = f.read()
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    if max_side > 0:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > max_side:
                scale = max_side / max(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                buffer = io.BytesIO()
                image.convert("RGB").resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
                data, mime = buffer.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def parse_refined_caption(content: str) -> str:
    """The model's answer -> one caption (whitespace collapsed, surrounding quotes removed).

    Raises:
        ValueError: Empty, or longer than :data:`MAX_CAPTION_CHARS`.
    """
    text = " ".join(content.split()).strip().strip('"').strip("'").strip()
    if not text:
        raise ValueError("empty caption")
    if len(text) > MAX_CAPTION_CHARS:
        raise ValueError(f"answer of {len(text)} characters is not a caption")
    return text


class CaptionRefiner:
    """(image, caption) -> refined caption through a vision chat endpoint, cached."""

    def __init__(
        self,
        client: ChatClient,
        *,
        prompt: str | None = None,
        cache: ResponseCache | None = None,
        max_side: int = 768,
    ) -> None:
        """
        Args:
            client: The chat client of a vision-language model (endpoint, retries, budget).
            prompt: The system prompt; default ``prompts/caption_refinement.txt``.
            cache: Answers of earlier runs (and where this run's go); None: in memory only.
            max_side: Longer image side sent (0: the file as it is; see
                :func:`image_data_url`).
        """
        self.client = client
        self.prompt = prompt if prompt is not None else load_prompt("caption_refinement")
        self.cache = cache
        self.max_side = int(max_side)
        self.name = f"vlm:{client.endpoint.model}"

    @staticmethod
    def cache_meta(model: str, prompt: str, max_side: int) -> dict:
        """What cached answers depend on (the header of the cache file)."""
        return {
            "task": "refined_caption",
            "model": model,
            "prompt_sha256": prompt_sha256(prompt),
            "max_side": max_side,
        }

    @staticmethod
    def key(image: str, caption: str) -> str:
        """Cache key of a row: its image path as written in the manifest and its caption."""
        return json.dumps([image, caption], ensure_ascii=False)

    def cached(self, image: str, caption: str) -> str | None:
        return self.cache.get(self.key(image, caption)) if self.cache is not None else None

    def refine(self, image: str, image_path: str, caption: str) -> str:
        """Asks for one refined caption (or returns the cached one).

        Args:
            image: The image as the manifest names it (the cache key).
            image_path: Where the file is.
            caption: The original caption.

        Raises:
            OSError: The image cannot be read.
            ChatError: The request failed after retries (subclasses: endpoint refused, budget
                spent).
        """
        cached = self.cached(image, caption)
        if cached is not None:
            return cached
        url = image_data_url(image_path, max_side=self.max_side)
        messages = [
            {"role": "system", "content": self.prompt},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Original caption: {caption}"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            },
        ]
        refined = self.client.complete(messages, parse=parse_refined_caption)
        if self.cache is not None:
            self.cache.put(self.key(image, caption), refined)
            self.cache.maybe_save()
        return refined
