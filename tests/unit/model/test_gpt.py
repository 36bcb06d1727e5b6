from __future__ import annotations

import math

import pytest
import torch

from ml_playground.config.schema import ModelConfig
from ml_playground.model.gpt import GPT

VOCAB = 65
BLOCK = 16
N_LAYER = 2
N_EMBD = 32


def tiny_config(**overrides: object) -> ModelConfig:
    settings: dict[str, object] = {
        "n_layer": N_LAYER,
        "n_head": 2,
        "n_embd": N_EMBD,
        "block_size": BLOCK,
        "vocab_size": VOCAB,
    }
    settings.update(overrides)
    return ModelConfig.model_validate(settings)


def tiny_model(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


def random_tokens(batch: int, time: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, time), generator=generator)


def test_output_shapes_with_targets() -> None:
    model = tiny_model()
    idx = random_tokens(3, BLOCK)
    logits, loss = model(idx, targets=random_tokens(3, BLOCK, seed=2))
    assert logits.shape == (3, BLOCK, VOCAB)
    assert loss is not None
    assert loss.shape == ()
    assert torch.isfinite(loss)


def test_without_targets_only_the_last_position_is_scored() -> None:
    model = tiny_model()
    idx = random_tokens(3, 10)
    logits, loss = model(idx)
    assert loss is None
    assert logits.shape == (3, 1, VOCAB)
    # Same numbers as the last row of the full-sequence logits.
    full, _ = model(idx, targets=torch.zeros_like(idx))
    torch.testing.assert_close(logits, full[:, -1:, :])


def test_loss_at_init_is_close_to_uniform() -> None:
    model = tiny_model()
    idx = random_tokens(8, BLOCK)
    _, loss = model(idx, targets=random_tokens(8, BLOCK, seed=3))
    assert loss is not None
    assert abs(loss.item() - math.log(VOCAB)) < 0.3


def test_lm_head_is_tied_to_token_embedding() -> None:
    model = tiny_model()
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    # A change through one name is seen through the other.
    with torch.no_grad():
        model.wte.weight[0, 0] = 123.0
    assert model.lm_head.weight[0, 0].item() == 123.0


def test_sequence_longer_than_block_size_is_refused() -> None:
    model = tiny_model()
    logits, _ = model(random_tokens(1, BLOCK))  # exactly block_size is fine
    assert logits.shape == (1, 1, VOCAB)
    with pytest.raises(ValueError, match=rf"{BLOCK + 1} tokens exceeds block_size {BLOCK}"):
        model(random_tokens(1, BLOCK + 1))


def test_missing_vocab_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"vocab_size must be set"):
        GPT(tiny_config(vocab_size=None))


@pytest.mark.parametrize("bias", [False, True])
def test_attention_is_causal(bias: bool) -> None:
    model = tiny_model(bias=bias)
    idx = random_tokens(2, BLOCK)
    changed = idx.clone()
    cut = 9
    changed[:, cut] = (changed[:, cut] + 1) % VOCAB
    changed[:, cut + 3] = (changed[:, cut + 3] + 7) % VOCAB
    dummy = torch.zeros_like(idx)
    with torch.no_grad():
        before, _ = model(idx, targets=dummy)
        after, _ = model(changed, targets=dummy)
    torch.testing.assert_close(after[:, :cut], before[:, :cut], rtol=0.0, atol=1e-6)
    # The change must be visible from its own position on, or the check above proves nothing.
    assert not torch.allclose(after[:, cut:], before[:, cut:])


def test_num_params_excludes_position_embeddings_by_default() -> None:
    model = tiny_model()
    per_block = (
        2 * N_EMBD  # ln_1, ln_2 gains
        + N_EMBD * 3 * N_EMBD  # c_attn
        + N_EMBD * N_EMBD  # attention c_proj
        + N_EMBD * 4 * N_EMBD  # c_fc
        + 4 * N_EMBD * N_EMBD  # mlp c_proj
    )
    # The tied lm_head is the token embedding: counted once.
    total = VOCAB * N_EMBD + BLOCK * N_EMBD + N_LAYER * per_block + N_EMBD
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - BLOCK * N_EMBD
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == total


def test_bias_option_adds_biases_everywhere() -> None:
    without = tiny_model(bias=False)
    with_bias = tiny_model(bias=True)
    assert without.h[0].attn.c_attn.bias is None
    assert without.ln_f.bias is None
    assert with_bias.h[0].attn.c_attn.bias is not None
    assert with_bias.h[0].mlp.c_fc.bias is not None
    assert with_bias.ln_f.bias is not None
    per_block_biases = 3 * N_EMBD + N_EMBD + 2 * N_EMBD + 4 * N_EMBD + N_EMBD
    extra = N_LAYER * per_block_biases + N_EMBD
    assert with_bias.num_params() - without.num_params() == extra
    _, loss = with_bias(random_tokens(2, 8), targets=random_tokens(2, 8, seed=4))
    assert loss is not None
    assert torch.isfinite(loss)


def test_dropout_is_active_in_training_and_off_in_eval() -> None:
    model = tiny_model(dropout=0.2)
    idx = random_tokens(2, BLOCK)
    targets = random_tokens(2, BLOCK, seed=5)
    with torch.no_grad():
        model.train()
        first, _ = model(idx, targets=targets)
        second, _ = model(idx, targets=targets)
        assert not torch.equal(first, second)
        model.eval()
        third, _ = model(idx, targets=targets)
        fourth, _ = model(idx, targets=targets)
    assert torch.equal(third, fourth)


def test_backward_reaches_every_parameter() -> None:
    model = tiny_model(bias=True).train()
    _, loss = model(random_tokens(2, BLOCK), targets=random_tokens(2, BLOCK, seed=6))
    assert loss is not None
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_same_seed_gives_identical_weights_and_outputs() -> None:
    a, b, c = tiny_model(seed=7), tiny_model(seed=7), tiny_model(seed=8)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["wte.weight"], state_c["wte.weight"])
    idx = random_tokens(2, BLOCK)
    with torch.no_grad():
        assert torch.equal(a(idx)[0], b(idx)[0])


def test_residual_projections_use_scaled_init() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=8, n_embd=64, n_head=2))
    scaled = 0.02 / math.sqrt(2 * 8)
    for block in model.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.15)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.15)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.15)
