"""A minimal client of an OpenAI-compatible chat-completions endpoint, for offline caption tools.

The paper refines captions with a vision-language model (LLaVA) and parses entities with
ChatGPT (Sec. 3.3). ``tools/refine_captions.py`` and ``tools/extract_entities.py --backend llm``
do that with any server that speaks the OpenAI chat-completions protocol (OpenAI, vLLM, Ollama,
llama.cpp, LM Studio, ...): ``POST {base_url}/chat/completions`` with a JSON body
``{"model", "messages", "temperature", ...}``, answered by ``{"choices": [{"message":
{"content": "..."}}]}``. It uses only the standard library (no SDK to pin).

Every call is retried with exponential back-off on what is worth retrying: connection errors,
timeouts, HTTP 408/409/429/5xx (``Retry-After`` honoured), a body that is not the protocol's JSON,
and an answer the caller's ``parse`` rejects (malformed JSON from the model). HTTP 401/403/404
mean a wrong key, URL or model: every further request would fail the same way, so they raise
:class:`ChatEndpointError` at once. A request budget caps the HTTP requests of a run
(:class:`ChatBudgetExhausted`).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "add_endpoint_arguments",
    "client_from_args",
    "read_prompt_file",
    "ChatBudgetExhausted",
    "ChatClient",
    "ChatEndpoint",
    "ChatEndpointError",
    "ChatError",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP statuses worth another try (rate limits, overload, server errors).
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# HTTP statuses after which no request can succeed (bad key, permissions, URL or model).
_FATAL_STATUSES = frozenset({401, 403, 404})
# Characters of a bad answer quoted in a log line.
_QUOTE = 200


class ChatError(RuntimeError):
    """A request that failed after every retry (the caller logs it and skips its item)."""


class ChatEndpointError(ChatError):
    """The endpoint refuses every request (HTTP 401/403/404): wrong key, URL or model."""


class ChatBudgetExhausted(ChatError):
    """The run's request budget is spent; no further request is sent."""


@dataclass(frozen=True)
class ChatEndpoint:
    """Where requests go.

    Attributes:
        base_url: The API root, e.g. ``"https://api.openai.com/v1"`` or
            ``"http://127.0.0.1:8000/v1"``; ``/chat/completions`` is appended.
        model: The model name the server expects.
        api_key: Sent as ``Authorization: Bearer <key>``; ``""`` sends no header (local
            servers).
    """

    base_url: str
    model: str
    api_key: str = ""

    @classmethod
    def resolve(
        cls,
        *,
        base_url: str | None,
        model: str | None,
        api_key: str | None,
        env_prefix: str,
    ) -> ChatEndpoint:
        """Flags first, then ``{env_prefix}_BASE_URL`` / ``_MODEL`` / ``_API_KEY``, then
        ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (the OpenAI SDK's variables).

        Raises:
            ValueError: No base URL or no model, with the flags and variables that set them.
        """

        def pick(flag: str | None, *names: str) -> str:
            if flag:
                return flag
            return next((os.environ[n] for n in names if os.environ.get(n)), "")

        url = pick(base_url, f"{env_prefix}_BASE_URL", "OPENAI_BASE_URL")
        name = pick(model, f"{env_prefix}_MODEL")
        key = pick(api_key, f"{env_prefix}_API_KEY", "OPENAI_API_KEY")
        if not url or not name:
            raise ValueError(
                f"the endpoint needs a base URL and a model: --base-url / ${env_prefix}_BASE_URL "
                f"(or $OPENAI_BASE_URL) and --model / ${env_prefix}_MODEL"
            )
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base URL {url!r} must start with http:// or https://")
        return cls(base_url=url.rstrip("/"), model=name, api_key=key)


class ChatClient:
    """Sends chat-completion requests with retries, back-off and a request budget.

    Example:
        >>> client = ChatClient(ChatEndpoint("http://127.0.0.1:8000/v1", "llama3"))
        >>> client.complete([{"role": "user", "content": "Say hi"}])  # doctest: +SKIP
        'Hi!'
    """

    def __init__(
        self,
        endpoint: ChatEndpoint,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_requests: int = 0,
        temperature: float = 0.0,
        max_tokens: int = 0,
        json_mode: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """
        Args:
            endpoint: Base URL, model and key.
            timeout: Seconds to wait for one response.
            max_retries: Further attempts after a failed one (0: one attempt).
            backoff: Seconds before the first retry; doubled after each (capped by
                ``max_backoff``); a ``Retry-After`` header overrides it.
            max_backoff: Longest wait between attempts.
            max_requests: HTTP requests allowed over the client's life, retries included
                (0: unlimited).
            temperature: Sampling temperature (0: as deterministic as the server allows).
            max_tokens: ``max_tokens`` of each request (0: the server's default).
            json_mode: Ask for ``response_format: {"type": "json_object"}`` (servers that
                support it return valid JSON only).
            sleep: Called to wait between attempts (tests pass a recorder).
        """
        if timeout <= 0 or max_retries < 0 or backoff < 0 or max_requests < 0:
            raise ValueError(
                "timeout must be > 0 and max_retries, backoff, max_requests >= 0; got "
                f"{timeout}, {max_retries}, {backoff}, {max_requests}"
            )
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_requests = int(max_requests)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.json_mode = bool(json_mode)
        self.sleep = sleep
        self.requests_sent = 0

    @property
    def budget_left(self) -> int | None:
        """Requests left in the budget; None when unlimited."""
        return None if not self.max_requests else max(0, self.max_requests - self.requests_sent)

    def complete(self, messages: list[dict[str, Any]], *, parse: Callable[[str], T] = str) -> T:
        """Sends one chat request and returns ``parse`` of the answer's text.

        Args:
            messages: OpenAI chat messages (``role``, ``content``; content may be a list of
                ``text`` / ``image_url`` parts for vision models).
            parse: Turns the answer's text into the result; raises ``ValueError`` for an answer
                that should be asked again (e.g. malformed JSON).

        Returns:
            ``parse(content)``.

        Raises:
            ChatError: Every attempt failed (the last reason is in the message).
            ChatEndpointError: HTTP 401/403/404.
            ChatBudgetExhausted: The request budget is spent.
        """
        body = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": self.temperature,
        }
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        data = json.dumps(body).encode("utf-8")
        reason = ""
        for attempt in range(self.max_retries + 1):
            if self.budget_left == 0:
                raise ChatBudgetExhausted(
                    f"request budget of {self.max_requests} spent" + (f" ({reason})" * bool(reason))
                )
            self.requests_sent += 1
            wait = self.backoff * 2**attempt
            try:
                return parse(self._post(data))
            except _RetryAfter as e:
                reason, wait = e.reason, e.seconds if e.seconds is not None else wait
            except ValueError as e:  # a body or an answer that is not what was asked for
                reason = f"bad answer: {e}"
            if attempt < self.max_retries:
                logger.debug("attempt %d failed (%s); retrying", attempt + 1, reason)
                self.sleep(min(wait, self.max_backoff))
        raise ChatError(f"{self.max_retries + 1} attempt(s) failed; last: {reason}")

    def _post(self, data: bytes) -> str:
        """One HTTP request; returns the answer's text. Raises _RetryAfter for a failure worth
        another try, ValueError for a malformed body, ChatEndpointError for a fatal status."""
        headers = {"Content-Type": "application/json"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        request = urllib.request.Request(
            f"{self.endpoint.base_url}/chat/completions", data=data, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:_QUOTE].decode("utf-8", "replace")
            if e.code in _FATAL_STATUSES:
                raise ChatEndpointError(
                    f"{self.endpoint.base_url} answered HTTP {e.code} for model "
                    f"{self.endpoint.model!r}: {detail} (check the base URL, model and key)"
                ) from None
            if e.code in _RETRY_STATUSES:
                raise _RetryAfter(f"HTTP {e.code}: {detail}", _retry_after(e.headers)) from None
            raise ChatError(f"HTTP {e.code}: {detail}") from None
        except (
            urllib.error.URLError,
            http.client.HTTPException,  # a dropped connection, a truncated body
            TimeoutError,  # socket.timeout is an alias of it
            ConnectionError,
        ) as e:
            raise _RetryAfter(f"{type(e).__name__}: {getattr(e, 'reason', e)}", None) from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            raise ValueError(f"not a chat completion: {raw[:_QUOTE]!r}") from None
        if not isinstance(content, str):
            raise ValueError(f"message content is {type(content).__name__}, not text")
        return content


class _RetryAfter(Exception):
    def __init__(self, reason: str, seconds: float | None) -> None:
        super().__init__(reason)
        self.reason, self.seconds = reason, seconds


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: use the back-off instead
        return None


# ------------------------------------------------------------------ command-line helpers (tools/)
def add_endpoint_arguments(parser, env_prefix: str) -> None:
    """Adds the endpoint, prompt, cache, retry and budget flags shared by the caption tools.

    Args:
        parser: An ``argparse.ArgumentParser``.
        env_prefix: Prefix of the environment variables read for unset flags (e.g.
            ``"UNIOVSEG_LLM"``; see :meth:`ChatEndpoint.resolve`).
    """
    group = parser.add_argument_group("OpenAI-compatible endpoint")
    group.add_argument(
        "--base-url", help=f"API root, e.g. http://127.0.0.1:8000/v1 (${env_prefix}_BASE_URL)"
    )
    group.add_argument("--model", help=f"model name (${env_prefix}_MODEL)")
    group.add_argument("--api-key", help=f"bearer key (${env_prefix}_API_KEY, $OPENAI_API_KEY)")
    group.add_argument("--prompt", help="system prompt file (default: uniovseg/data/prompts)")
    group.add_argument("--cache", help="answer cache file (default: beside --output)")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--max-retries", type=int, default=3, help="retries per request")
    group.add_argument("--backoff", type=float, default=2.0, help="first retry wait (s), doubled")
    group.add_argument(
        "--max-requests", type=int, default=0, help="HTTP requests of this run (0: unlimited)"
    )
    group.add_argument(
        "--json-mode", action="store_true", help='send response_format {"type": "json_object"}'
    )


def client_from_args(args, env_prefix: str) -> ChatClient:
    """The client of the flags added by :func:`add_endpoint_arguments` (ValueError if the
    endpoint is incomplete)."""
    endpoint = ChatEndpoint.resolve(
        base_url=args.base_url, model=args.model, api_key=args.api_key, env_prefix=env_prefix
    )
    return ChatClient(
        endpoint,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff=args.backoff,
        max_requests=args.max_requests,
        json_mode=args.json_mode,
    )


def read_prompt_file(path: str | None, default: str) -> str:
    """The prompt in ``path``, or the shipped prompt ``default`` when ``path`` is empty."""
    from .prompts import load_prompt

    if not path:
        return load_prompt(default)
    if not os.path.isfile(path):
        raise ValueError(f"prompt file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return f.read()
