"""`hoe convert-gguf` and `--base FILE.gguf` on a tiny random Llama written as GGUF with the `gguf` package."""

from __future__ import annotations

import pytest
import torch
from arch_helpers import cli
from tiny_gguf import write_llama_gguf

VOCAB = 300  # the byte-level BPE needs 256 bytes + specials


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(source model, path of its GGUF file)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=1, bos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    return model, write_llama_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_convert_gguf_exact_cached_atomic(tiny_gguf, tmp_path, capsys):
    from hoe.core.gguf import STAMP
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, gguf = tiny_gguf
    out = tmp_path / "hf"
    rc, text = cli(["convert-gguf", str(gguf), str(out)])
    assert rc == 0 and str(out) in text
    back = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)  # q/k un-permuted exactly
    ids = AutoTokenizer.from_pretrained(out)("The capital of France").input_ids
    assert ids and max(ids) < VOCAB
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    stamp = (out / STAMP).read_text()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert cli(["convert-gguf", str(gguf), str(out)])[0] == 0  # same source: reused, not rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime and (out / STAMP).read_text() == stamp
    other = tmp_path / "other"
    other.mkdir()
    capsys.readouterr()
    assert cli(["convert-gguf", str(gguf), str(other)])[0] == 2  # holds something else: refused without --force
    assert "--force" in capsys.readouterr().err
    assert cli(["convert-gguf", str(gguf), str(other), "--force"])[0] == 0 and (other / STAMP).is_file()


def test_convert_gguf_refusals(tiny_gguf, tmp_path, capsys):
    import gguf as gguf_pkg

    _, gguf = tiny_gguf
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    unknown = tmp_path / "rwkv.gguf"
    w = gguf_pkg.GGUFWriter(str(unknown), "rwkv6")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for argv, words in (([str(not_gguf), str(tmp_path / "a")], "not a GGUF file"),
                        ([str(gguf), str(gguf.parent)], "would contain its input"),
                        ([str(unknown), str(tmp_path / "b")], "GGUF architecture 'rwkv6' cannot be read")):
        capsys.readouterr()
        assert cli(["convert-gguf", *argv])[0] == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_base_may_be_a_gguf_file(tiny_gguf, tmp_path, monkeypatch):
    """`hoe assemble --base FILE.gguf`: converted once into $HOE_CACHE/gguf/, then used as the base."""
    from hoe.core.checkpoint import HoECheckpoint
    from hoe.core.gguf import resolve_base
    from tiny_models import peft_adapter

    model, gguf = tiny_gguf
    monkeypatch.setenv("HOE_CACHE", str(tmp_path / "cache"))
    adapters = [str(peft_adapter(model, tmp_path / f"a{i}", seed=i, target_modules=["q_proj", "down_proj"]))
                for i in range(2)]
    rc, _ = cli(["assemble", "--base", str(gguf), "--peft", *adapters, "--objectives", "a,b",
                 "--out", str(tmp_path / "hoe")])
    assert rc == 0
    folder = resolve_base(gguf)
    assert folder.parent == tmp_path / "cache" / "gguf" and (folder / "model.safetensors").is_file()
    from hoe.core.loading import load_base

    HoECheckpoint.load(tmp_path / "hoe").validate(load_base(folder))  # made for exactly that base
