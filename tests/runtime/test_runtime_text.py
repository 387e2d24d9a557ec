import pytest
from hoe.core.errors import InputError
from hoe.runtime.text import TextTracker
from hoe.runtime.tokenizer import Tokenizer
from runtime_helpers import CHATML


def _stream(tokenizer, ids, stop=None):
    tracker = TextTracker(tokenizer, stop)
    pieces = []
    for i in ids:
        pieces.append(tracker.add(i))
        if tracker.stopped:
            break
    pieces.append(tracker.finish())
    return tracker, pieces


def test_pieces_add_up_to_full_decode_and_never_split_characters(tokenizer):
    text = "Ünïcödé tëxt and emoji 🙂 here, hello world 🙂🙂!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 10
    tracker, pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(bool(p) for p in pieces) > 5  # really incremental


def test_stop_string_cuts_text_and_is_held_back(tokenizer):
    text = "Hello world, how are you today? Rain falls"
    ids = tokenizer.encode(text, add_special_tokens=False)
    tracker, pieces = _stream(tokenizer, ids, stop=["are you"])
    assert tracker.stopped and tracker.text == "Hello world, how "
    assert "".join(pieces) == "Hello world, how "
    assert not any("are" in p for p in pieces)
    tracker, pieces = _stream(tokenizer, ids, stop=["xyz never"])
    assert not tracker.stopped and "".join(pieces) == text


def test_chat_template_renders_like_hf(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]
    out = tokenizer.apply_chat_template(messages)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 🙂<|im_end|>\n"
                   "<|im_start|>assistant\n")
    ids = tokenizer.encode_chat(messages)
    assert ids[0] == tokenizer.token_to_id("<|im_start|>")
    assert tokenizer.decode(ids, skip_special_tokens=False) == out


def test_chat_template_errors(tokenizer_dir):
    strict = Tokenizer(tokenizer_dir / "tokenizer.json", {},
                       "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}" + CHATML)
    with pytest.raises(InputError, match="user first"):
        strict.apply_chat_template([{"role": "assistant", "content": "x"}])
    with pytest.raises(InputError, match="role"):
        strict.apply_chat_template([{"content": "x"}])
    plain = Tokenizer(tokenizer_dir / "tokenizer.json", {})
    with pytest.raises(InputError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "x"}])
