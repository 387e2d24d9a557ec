"""Runtime fixtures (helpers live in runtime_helpers.py)."""

import json

import pytest
from hoe.runtime.tokenizer import Tokenizer
from runtime_helpers import write_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    return Tokenizer(tokenizer_dir / "tokenizer.json", config)


