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


_GPU_SCRIPT = r"""
import copy, torch, transformers
cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
torch.manual_seed(0)
fa2 = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="flash_attention_2",
                                                    dtype=torch.bfloat16).cuda().eval()
sdpa = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="sdpa",
                                                     dtype=torch.bfloat16).cuda().eval()
sdpa.load_state_dict(fa2.state_dict())
assert fa2.config._attn_implementation == "flash_attention_2"
from flash_attn import _lib
calls = []  # every library call passes Context.run (the inference fast path skips FlashAttnFunc)
orig = _lib.Context.run
_lib.Context.run = lambda self, op, *a, **kw: calls.append(op) or orig(self, op, *a, **kw)
ids = torch.randint(0, 97, (2, 40), device="cuda")
mask = torch.ones_like(ids)
mask[1, :9] = 0
with torch.no_grad():
    a, b = fa2(ids).logits.float(), sdpa(ids).logits.float()
    err = (a - b).abs().max().item()
    assert err < 5e-2, err
    a, b = fa2(ids, attention_mask=mask).logits.float(), sdpa(ids, attention_mask=mask).logits.float()
    err2 = (a[1, 9:] - b[1, 9:]).abs().max().item()
    assert err2 < 5e-2, err2
assert calls, "flash_attention_2 did not call flash_attn"
out = fa2.generate(ids[:, :10], attention_mask=mask[:, :10], max_new_tokens=5, do_sample=False, pad_token_id=0)
assert out.shape == (2, 15)
print("ok", err, err2)
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="transformers allows flash_attention_2 only with a GPU")
def test_flash_attention_2_unchanged_on_gpu(tmp_path):
    """With a GPU, attn_implementation="flash_attention_2" uses this package unchanged. transformers
    needs the distribution's metadata; when running from the source tree a minimal dist-info stands in."""
    import importlib.metadata
    import os
    import subprocess
    import sys
    from pathlib import Path

    import flash_attn

    env = dict(os.environ)
    try:
        importlib.metadata.version("flash_attn")
    except importlib.metadata.PackageNotFoundError:
        package_root = Path(flash_attn.__file__).resolve().parent.parent
        info = tmp_path / "flash_attn-2.8.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n")
        (info / "top_level.txt").write_text("flash_attn\n")
        (info / "RECORD").write_text("flash_attn/__init__.py,,\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(package_root), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
