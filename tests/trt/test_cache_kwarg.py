"""hoe_core/model.py passes the KV cache under the name the installed transformers takes.

transformers 5.17 (the GPU machine) names it `past_key_values`; newer 5.x name it `cache`. An unknown
keyword would vanish into **kwargs and silently drop the cache."""

from __future__ import annotations

import types

from hoe.core.model import cache_kwarg, output_cache


def test_cache_kwarg_follows_the_signature():
    class New:
        def forward(self, input_ids=None, cache=None, **kwargs):
            pass

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs):
            pass

    assert cache_kwarg(New()) == "cache" and cache_kwarg(Old()) == "past_key_values"


def test_output_cache_reads_either_field():
    from dataclasses import dataclass

    @dataclass
    class NewOut:
        logits: object = None
        cache: object = None

    @dataclass
    class OldOut:
        logits: object = None
        past_key_values: object = None

    sentinel = types.SimpleNamespace()
    assert output_cache(NewOut(cache=sentinel)) is sentinel
    assert output_cache(OldOut(past_key_values=sentinel)) is sentinel


def test_installed_llama_takes_the_detected_name():
    import inspect

    from transformers import LlamaForCausalLM

    params = inspect.signature(LlamaForCausalLM.forward).parameters
    assert cache_kwarg(LlamaForCausalLM.__new__(LlamaForCausalLM)) in params
