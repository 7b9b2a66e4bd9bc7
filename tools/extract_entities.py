#!/usr/bin/env python
"""Adds entity phrases to a caption manifest (JSON lines), offline.

Each row gets ``"entities": [...]`` parsed from its refined caption when present (else its
caption) by the chosen parser (see uniovseg/data/entity_extraction.py). Rows that already have
entities (e.g. from ChatGPT/LLaVA, as in the paper) keep them unless --overwrite. Train with
``INPUT.UNIOVSEG.CAPTION.ENTITY_SOURCE manifest`` to use the written entities as they are::

    python tools/extract_entities.py --manifest captions.jsonl --output captions_entities.jsonl
    python tools/extract_entities.py --manifest captions.jsonl --output out.jsonl \
        --parser spacy --spacy-model en_core_web_sm

Lines that are not JSON objects with a string ``caption`` are copied unchanged and counted per
reason in the printed summary. A missing manifest or an unwritable output is a one-line error
(exit status 1) before any work; no temporary file is left behind on failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from uniovseg.data.entity_extraction import (
    PARSER_NAMES,
    build_entity_parser,
    check_manifest_paths,
    write_manifest_entities,
)
from uniovseg.logs import setup_logging

_SUMMARY_KEYS = (
    "parsed",
    "kept",
    "empty",
    "copied",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_caption",
)


def main(argv: list[str] | None = None) -> dict:
    """Runs the tool; returns the printed summary. Exits with status 1 on a bad path/parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="input JSON-lines caption manifest")
    parser.add_argument("--output", required=True, help="output manifest (may be the input)")
    parser.add_argument("--parser", choices=PARSER_NAMES, default="rule")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline package")
    parser.add_argument("--max-words", type=int, default=4, help="words kept per entity")
    parser.add_argument("--max-entities", type=int, default=0, help="entities per row (0: all)")
    parser.add_argument(
        "--caption-only", action="store_true", help="ignore refined_caption, parse caption"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="re-parse rows that already have entities"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        check_manifest_paths(args.manifest, args.output)  # before a parser is loaded
        entity_parser = build_entity_parser(
            args.parser,
            spacy_model=args.spacy_model,
            max_words=args.max_words,
            max_entities=args.max_entities,
        )
        counts = write_manifest_entities(
            args.manifest,
            args.output,
            entity_parser,
            use_refined=not args.caption_only,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    summary = {"output": args.output, **{k: counts.get(k, 0) for k in _SUMMARY_KEYS}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
