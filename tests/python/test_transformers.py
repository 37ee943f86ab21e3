"""Hugging Face transformers on CPU: flash_attn.integrations.transformers.register() makes our
kernel an attention implementation; a tiny randomly initialised Llama (no downloads) gives the
same logits and generations as transformers' sdpa, with and without padding."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flash_attn.integrations.transformers import register  # noqa: E402


def _models():
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    name = register()
    # separate configs: from_config records the implementation in the config it is given
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=name).eval()
    sdpa = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    assert ours.config._attn_implementation == name and sdpa.config._attn_implementation == "sdpa"
    sdpa.load_state_dict(ours.state_dict())
    return ours, sdpa


def test_register_name_rules():
    assert register() == "fa_plus"
    with pytest.raises(ValueError, match="flash"):
        register("my_flash")


def test_logits_match_sdpa_with_and_without_padding(monkeypatch):
    from flash_attn.integrations import transformers as integration

    calls = []
    for name in ("flash_attn_func", "flash_attn_varlen_func"):
        fn = getattr(integration, name)
        monkeypatch.setattr(integration, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    ours, sdpa = _models()
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, sdpa(ids).logits, atol=1e-4, rtol=1e-4)
        mask = torch.ones(2, 23, dtype=torch.long)
        mask[1, :7] = 0  # left padding
        a, b = ours(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a[1, 7:], b[1, 7:], atol=1e-4, rtol=1e-4)
    assert {"flash_attn_func", "flash_attn_varlen_func"} <= set(calls)  # both paths ran our kernels


def test_generate_matches_sdpa():
    ours, sdpa = _models()
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kw), sdpa.generate(ids, **kw))


def test_training_step_gradients_match_sdpa():
    ours, sdpa = _models()
    ids = torch.randint(0, 97, (2, 17))
    for model in (ours, sdpa):
        model.train()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    for (name, p), q in zip(ours.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=name)
