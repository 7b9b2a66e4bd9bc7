"""The prompts of the offline caption tools, kept as text files beside this module.

``entity_extraction.txt``: the system prompt of the LLM entity parser
(:mod:`uniovseg.data.llm_entities`); ``caption_refinement.txt``: that of the vision-language
caption refiner (:mod:`uniovseg.data.caption_refinement`). Caches of model answers record each
prompt's SHA-256, so editing a prompt starts a new cache instead of mixing answers.
"""

from __future__ import annotations

import hashlib
from importlib import resources

__all__ = ["load_prompt", "prompt_sha256"]


def load_prompt(name: str) -> str:
    """The text of a shipped prompt, e.g. ``load_prompt("entity_extraction")``."""
    path = resources.files(__name__) / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"no prompt {name!r} in uniovseg/data/prompts")
    return path.read_text(encoding="utf-8")


def prompt_sha256(prompt: str) -> str:
    """SHA-256 (hex) of a prompt's text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()
