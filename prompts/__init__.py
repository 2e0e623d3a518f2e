"""Prompt sets and their loaders."""

from .csv import PromptRow, load_prompts

__all__ = ["PromptRow", "load_prompts"]
