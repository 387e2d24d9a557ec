"""Torch-free HoE runtime: load an exported folder and generate with a preference per request.

    import hoe.runtime as hr
    model = hr.load("out/smollm2-hoe", threads=1)
    [r] = model.generate("Write a haiku about rain.", preference=[0.2, 0.5, 0.3],
                         config=hr.GenerationConfig(max_new_tokens=64))
    print(r.text)

Only numpy, tokenizers, safetensors, jinja2 and onnxruntime are imported (the "torch" backend
imports torch when it is chosen).
"""

from hoe.contract.folder import Manifest

from .backends import BackendConfig, available_backends, register_backend
from .config import GenerationConfig
from .generator import Generator
from .model import Model, load
from .result import Result

__all__ = ["BackendConfig", "GenerationConfig", "Generator", "Manifest", "Model", "Result", "available_backends",
           "load", "register_backend"]
