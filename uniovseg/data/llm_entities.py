"""Entities parsed by a large language model, as the paper's ChatGPT-based parser (Sec. 3.3).

:class:`LLMEntityParser` sends captions in batches to an OpenAI-compatible chat endpoint
(:class:`uniovseg.data.chat_client.ChatClient`) with the prompt in
``uniovseg/data/prompts/entity_extraction.txt``: one request carries up to ``batch_size``
numbered captions and the model answers ``{"entities": [[...], ...]}``, one list per caption. An
answer that is not that JSON (or has the wrong number of lists) is asked again with the client's
back-off; a batch that still fails is logged and its captions get no answer (None), so the run
goes on and a rerun retries them. Answers are kept in a :class:`~uniovseg.data.response_cache.
ResponseCache` keyed by caption text: a rerun asks only for what is missing.

The model's phrases go through the offline parsers' clean-up
(:func:`uniovseg.data.entity_extraction.clean_entity_words`: lower case, no leading
determiners/numbers, at most ``max_words`` words, no generic heads such as "photo"), so that the
backends differ only in how they find phrases. The cache keeps the raw answers, so changing
``max_words`` needs no new request.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

from .chat_client import ChatBudgetExhausted, ChatClient, ChatEndpointError, ChatError
from .entity_extraction import clean_entity_words, dedupe_entities
from .prompts import load_prompt, prompt_sha256
from .response_cache import ResponseCache

__all__ = ["LLMEntityParser", "parse_entity_answer"]

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_entity_answer(content: str, num_captions: int) -> list[list[str]]:
    """The model's answer -> one list of phrases per caption.

    Accepts ``{"entities": [[...], ...]}`` or a bare ``[[...], ...]``, optionally inside a
    Markdown code fence.

    Raises:
        ValueError: Not JSON, not that shape, or not ``num_captions`` lists of strings.
    """
    match = _FENCE.match(content)
    text = match.group(1) if match else content
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg}): {content[:120]!r}") from None
    if isinstance(answer, dict):
        answer = answer.get("entities")
    if not isinstance(answer, list) or len(answer) != num_captions:
        got = len(answer) if isinstance(answer, list) else type(answer).__name__
        raise ValueError(f"expected {num_captions} entity lists, got {got}")
    for item in answer:
        if not isinstance(item, list) or not all(isinstance(e, str) for e in item):
            raise ValueError(f"an entity list is not a list of strings: {item!r:.120}")
    return answer


class LLMEntityParser:
    """Caption -> entities through an LLM, batched and cached (see the module docstring).

    Use :meth:`parse_many` on all captions first (it batches the requests), then call the
    parser per caption (as :func:`~uniovseg.data.entity_extraction.write_manifest_entities`
    does): a caption without an answer gives None, without a new request.
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        prompt: str | None = None,
        cache: ResponseCache | None = None,
        batch_size: int = 16,
        max_words: int = 4,
        max_entities: int = 0,
    ) -> None:
        """
        Args:
            client: The chat client (endpoint, retries, budget).
            prompt: The system prompt; default ``prompts/entity_extraction.txt``.
            cache: Answers of earlier runs (and where this run's go); None keeps them in memory.
            batch_size: Captions per request.
            max_words: Keep at most this many trailing words of a phrase.
            max_entities: Keep at most this many entities per caption (0 = all).
        """
        if batch_size < 1 or max_words < 1 or max_entities < 0:
            raise ValueError(
                "batch_size and max_words must be >= 1 and max_entities >= 0, got "
                f"{batch_size}, {max_words}, {max_entities}"
            )
        self.client = client
        self.prompt = prompt if prompt is not None else load_prompt("entity_extraction")
        self.cache = cache
        self.batch_size = int(batch_size)
        self.max_words = int(max_words)
        self.max_entities = int(max_entities)
        self.name = f"llm:{client.endpoint.model}"
        self._answers: dict[str, list[str]] = {}

    @staticmethod
    def cache_meta(model: str, prompt: str) -> dict:
        """What cached answers depend on (the header of the cache file)."""
        return {"task": "entities", "model": model, "prompt_sha256": prompt_sha256(prompt)}

    def _raw(self, text: str) -> list[str] | None:
        if text in self._answers:
            return self._answers[text]
        if self.cache is not None and text in self.cache:
            return self.cache.get(text)
        return None

    def _request(self, texts: list[str]) -> list[list[str]]:
        numbered = [f"{i}. {t}" for i, t in enumerate(texts, start=1)]
        messages = [
            {"role": "system", "content": self.prompt},
            {"role": "user", "content": json.dumps({"captions": numbered}, ensure_ascii=False)},
        ]
        return self.client.complete(messages, parse=lambda c: parse_entity_answer(c, len(texts)))

    def parse_many(self, texts: Iterable[str]) -> dict[str, int]:
        """Asks for every caption without an answer yet, in batches.

        A batch that fails after the client's retries is logged and skipped; a spent budget
        stops the requests (the rest stay unanswered). The cache is saved as it goes and at
        the end, also when an exception (e.g. :class:`ChatEndpointError`) ends the run.

        Returns:
            Counts: ``cached`` (answered before), ``answered``, ``failed`` (in failed batches),
            ``not_sent`` (left when the budget ran out).
        """
        unique = list(dict.fromkeys(texts))
        todo = [t for t in unique if self._raw(t) is None]
        counts = {"cached": len(unique) - len(todo), "answered": 0, "failed": 0, "not_sent": 0}
        try:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                try:
                    answers = self._request(batch)
                except ChatBudgetExhausted as e:
                    counts["not_sent"] = len(todo) - start
                    logger.warning("%s; %d caption(s) left unparsed", e, counts["not_sent"])
                    break
                except ChatEndpointError:
                    raise  # every request would fail: stop (the cache is saved below)
                except ChatError as e:
                    counts["failed"] += len(batch)
                    logger.warning(
                        "LLM batch of %d caption(s) skipped (%s); first: %r",
                        len(batch),
                        e,
                        batch[0],
                    )
                    continue
                for text, raw in zip(batch, answers, strict=True):
                    self._answers[text] = raw
                    if self.cache is not None:
                        self.cache.put(text, raw)
                counts["answered"] += len(batch)
                if self.cache is not None:
                    self.cache.maybe_save()
        finally:
            if self.cache is not None:
                self.cache.save()
        logger.info("LLM entities (%s): %s", self.name, counts)
        return counts

    def __call__(self, text: str) -> list[str] | None:
        """Caption -> entities from the answers so far (None: no answer; no request is sent)."""
        raw = self._raw(text)
        if raw is None:
            return None
        return dedupe_entities(
            (clean_entity_words(p.split(), max_words=self.max_words) for p in raw),
            self.max_entities,
        )
