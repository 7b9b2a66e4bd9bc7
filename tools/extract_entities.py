#!/usr/bin/env python
"""Adds entity phrases to a caption manifest (JSON lines) with a chosen backend.

Each row gets ``"entities": [...]`` parsed from its refined caption when present (else its
caption), and ``"entity_parser"`` naming the backend (``rule``, ``spacy:<pipeline>``,
``llm:<model>``). Rows that already have entities keep them unless --overwrite. Training with
``INPUT.UNIOVSEG.CAPTION.ENTITY_SOURCE auto`` (the default) uses the written entities as they are
and parses the rows without them. Backends:

- ``rule``: the dependency-free chunker; ``spacy``: spaCy noun chunks (``pip install -e
  .[spacy]``); ``auto``: spaCy when installed, else rule.
- ``llm``: the paper's ChatGPT-style parser through any OpenAI-compatible chat endpoint, captions
  sent in batches with the prompt uniovseg/data/prompts/entity_extraction.txt (or --prompt).
  Endpoint from --base-url/--model/--api-key or $UNIOVSEG_LLM_BASE_URL, $UNIOVSEG_LLM_MODEL,
  $UNIOVSEG_LLM_API_KEY ($OPENAI_BASE_URL / $OPENAI_API_KEY as fallbacks). Answers go to a
  resumable cache (--cache, default OUTPUT.llm_cache.jsonl): rerun the same command after an
  interruption or a spent --max-requests budget and only the missing captions are asked.
  A batch whose requests keep failing (HTTP errors, timeouts, malformed JSON; retried with
  back-off) is logged and its rows are written without entities; HTTP 401/403/404 stop the run
  (wrong key, URL or model) with the cache saved.

::

    python tools/extract_entities.py --manifest captions.jsonl --output captions_entities.jsonl
    python tools/extract_entities.py --manifest captions.jsonl --output out.jsonl --backend spacy
    UNIOVSEG_LLM_API_KEY=... python tools/extract_entities.py --manifest captions.jsonl \\
        --output out.jsonl --backend llm --base-url https://api.openai.com/v1 --model gpt-4o-mini

Lines that are not JSON objects with a string ``caption`` are copied unchanged and counted per
reason in the printed summary. A missing manifest, an unwritable output or an incomplete
endpoint is a one-line error (exit status 1) before any work; no temporary file is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys

from uniovseg.data.chat_client import (
    ChatEndpointError,
    add_endpoint_arguments,
    client_from_args,
    read_prompt_file,
)
from uniovseg.data.entity_extraction import (
    PARSER_NAMES,
    build_entity_parser,
    check_manifest_paths,
    entity_text,
    write_manifest_entities,
)
from uniovseg.data.llm_entities import LLMEntityParser
from uniovseg.data.manifest_rewrite import iter_manifest_rows
from uniovseg.data.response_cache import ResponseCache
from uniovseg.logs import setup_logging

BACKENDS = (*PARSER_NAMES, "llm")
_SUMMARY_KEYS = (
    "parsed",
    "kept",
    "empty",
    "failed",
    "copied",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_caption",
)


def _llm_parser(args) -> LLMEntityParser:
    client = client_from_args(args, "UNIOVSEG_LLM")
    prompt = read_prompt_file(args.prompt, "entity_extraction")
    cache = ResponseCache(
        args.cache or f"{args.output}.llm_cache.jsonl",
        meta=LLMEntityParser.cache_meta(client.endpoint.model, prompt),
    )
    return LLMEntityParser(
        client,
        prompt=prompt,
        cache=cache,
        batch_size=args.batch_size,
        max_words=args.max_words,
        max_entities=args.max_entities,
    )


def main(argv: list[str] | None = None) -> dict:
    """Runs the tool; returns the printed summary. Exits with status 1 on a bad path/backend."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", required=True, help="input JSON-lines caption manifest")
    parser.add_argument("--output", required=True, help="output manifest (may be the input)")
    parser.add_argument("--backend", "--parser", choices=BACKENDS, default="rule")
    parser.add_argument("--spacy-model", default="", help="spaCy pipeline (default: installed)")
    parser.add_argument("--max-words", type=int, default=4, help="words kept per entity")
    parser.add_argument("--max-entities", type=int, default=0, help="entities per row (0: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="captions per LLM request")
    parser.add_argument(
        "--caption-only", action="store_true", help="ignore refined_caption, parse caption"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="re-parse rows that already have entities"
    )
    add_endpoint_arguments(parser, "UNIOVSEG_LLM")
    args = parser.parse_args(argv)
    setup_logging()
    use_refined = not args.caption_only
    summary: dict = {"output": args.output, "backend": args.backend}
    try:
        check_manifest_paths(args.manifest, args.output)  # before a parser is loaded
        if args.backend == "llm":
            entity_parser = _llm_parser(args)
            texts = [
                entity_text(row, use_refined=use_refined)
                for row in iter_manifest_rows(args.manifest)
                if args.overwrite or not isinstance(row.get("entities"), list)
            ]
            summary["llm"] = entity_parser.parse_many(texts)
            summary["requests"] = entity_parser.client.requests_sent
        else:
            entity_parser = build_entity_parser(
                args.backend,
                spacy_model=args.spacy_model,
                max_words=args.max_words,
                max_entities=args.max_entities,
            )
        summary["backend"] = entity_parser.name
        counts = write_manifest_entities(
            args.manifest,
            args.output,
            entity_parser,
            use_refined=use_refined,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError, ChatEndpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    summary.update({k: counts.get(k, 0) for k in _SUMMARY_KEYS})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
