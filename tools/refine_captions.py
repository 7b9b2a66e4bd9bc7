#!/usr/bin/env python
"""Rewrites the captions of a manifest with a vision-language model (the paper's LLaVA step).

Each row whose image can be read gets ``"refined_caption"``: the model's description of the image
given its original caption (prompt: uniovseg/data/prompts/caption_refinement.txt, or --prompt),
and ``"refined_by": "vlm:<model>"``. The image goes in the request as a base64 data URL,
downscaled to --max-side. Stage 2 (and tools/extract_entities.py) then parse the refined caption
instead of the caption (``INPUT.UNIOVSEG.CAPTION.USE_REFINED``). Rows that already have a
refined caption keep it unless --overwrite.

Endpoint: any OpenAI-compatible chat endpoint serving a vision model (vLLM, Ollama, llama.cpp,
OpenAI, ...), from --base-url/--model/--api-key or $UNIOVSEG_VLM_BASE_URL, $UNIOVSEG_VLM_MODEL,
$UNIOVSEG_VLM_API_KEY ($OPENAI_BASE_URL / $OPENAI_API_KEY as fallbacks). Answers go to a
resumable cache (--cache, default OUTPUT.vlm_cache.jsonl): rerun the same command after an
interruption or a spent --max-requests budget and only the missing rows are asked. A row whose
request keeps failing (HTTP errors, timeouts, empty answers; retried with back-off) or whose
image cannot be read is logged and written unchanged; HTTP 401/403/404 stop the run with the
cache saved::

    python tools/refine_captions.py --manifest captions.jsonl --output captions_refined.jsonl \\
        --base-url http://127.0.0.1:8000/v1 --model llava-hf/llava-1.5-7b-hf
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from uniovseg.data.caption_refinement import CaptionRefiner
from uniovseg.data.chat_client import (
    ChatBudgetExhausted,
    ChatEndpointError,
    ChatError,
    add_endpoint_arguments,
    client_from_args,
    read_prompt_file,
)
from uniovseg.data.manifest_rewrite import check_manifest_paths, rewrite_manifest
from uniovseg.data.response_cache import ResponseCache
from uniovseg.logs import setup_logging

logger = logging.getLogger("refine_captions")

_SUMMARY_KEYS = (
    "refined",
    "kept",
    "failed",
    "not_sent",
    "unreadable_image",
    "copied",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_caption",
)


def main(argv: list[str] | None = None) -> dict:
    """Runs the tool; returns the printed summary. Exits with status 1 on a bad path/endpoint."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", required=True, help="input JSON-lines caption manifest")
    parser.add_argument("--output", required=True, help="output manifest (may be the input)")
    parser.add_argument(
        "--image-root", help="folder of relative image paths (default: the manifest's folder)"
    )
    parser.add_argument(
        "--max-side", type=int, default=768, help="longer image side sent (0: as is)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="refine rows that already have refined_caption"
    )
    add_endpoint_arguments(parser, "UNIOVSEG_VLM")
    args = parser.parse_args(argv)
    setup_logging()
    root = os.path.abspath(args.image_root or os.path.dirname(args.manifest))
    try:
        check_manifest_paths(args.manifest, args.output)
        client = client_from_args(args, "UNIOVSEG_VLM")
        prompt = read_prompt_file(args.prompt, "caption_refinement")
        cache = ResponseCache(
            args.cache or f"{args.output}.vlm_cache.jsonl",
            meta=CaptionRefiner.cache_meta(client.endpoint.model, prompt, args.max_side),
        )
        refiner = CaptionRefiner(client, prompt=prompt, cache=cache, max_side=args.max_side)
        budget_spent = False

        def update(row: dict) -> str:
            nonlocal budget_spent
            if isinstance(row.get("refined_caption"), str) and not args.overwrite:
                return "kept"
            image = row.get("image")
            if not isinstance(image, str) or not image:
                return "unreadable_image"
            caption = row["caption"]
            if budget_spent and refiner.cached(image, caption) is None:
                return "not_sent"
            path = image if os.path.isabs(image) else os.path.join(root, image)
            try:
                row["refined_caption"] = refiner.refine(image, path, caption)
            except OSError as e:
                logger.warning("%s: unreadable image (%s)", image, e)
                return "unreadable_image"
            except ChatBudgetExhausted as e:
                logger.warning("%s; the remaining rows are written unrefined", e)
                budget_spent = True
                return "not_sent"
            except ChatEndpointError:
                raise
            except ChatError as e:
                logger.warning("%s: caption not refined (%s)", image, e)
                return "failed"
            row["refined_by"] = refiner.name
            return "refined"

        try:
            counts = rewrite_manifest(args.manifest, args.output, update, what="refined captions")
        finally:
            cache.save()
    except (ValueError, OSError, ChatEndpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    summary = {"output": args.output, "backend": refiner.name, "requests": client.requests_sent}
    summary.update({k: counts.get(k, 0) for k in _SUMMARY_KEYS})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
