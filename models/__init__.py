"""Embedded HoE checkpoints, shipped as package data (`hoe.models`): `smollm2-hoe/` is the default model."""
