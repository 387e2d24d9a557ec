"""Prompt sets shipped as package data (`hoe.data`): `prompts/train.jsonl`, `prompts/heldout.jsonl`."""
