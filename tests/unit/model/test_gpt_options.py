"""The GPT's speedrun options: RoPE, QK-norm, squared ReLU, untied head, padded vocabulary,
activation checkpointing. Each against the property that makes it what it is."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from ml_playground.config.schema import ModelConfig
from ml_playground.generate.decode import BatchDecoder
from ml_playground.generate.sampling import SamplingParams
from ml_playground.model.gpt import GPT, Rotary, apply_rotary

VOCAB = 29
BLOCK = 12


def config(**overrides: object) -> ModelConfig:
    settings: dict[str, object] = {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": BLOCK,
        "vocab_size": VOCAB,
    }
    settings.update(overrides)
    return ModelConfig.model_validate(settings)


def gpt(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(config(**overrides)).eval()


def tokens(batch: int, time: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, time), generator=torch.Generator().manual_seed(seed))


ALL_OPTIONS = {
    "pos_embedding": "rope",
    "qk_norm": True,
    "mlp_activation": "relu2",
    "tie_embeddings": False,
    "vocab_multiple": 64,
}


def test_defaults_are_gpt2() -> None:
    cfg = ModelConfig()
    assert cfg.pos_embedding == "learned"
    assert cfg.qk_norm is False
    assert cfg.mlp_activation == "gelu"
    assert cfg.tie_embeddings is True
    assert cfg.vocab_multiple == 1
    model = gpt()
    assert model.wpe is not None
    assert model.rotary is None
    assert model.lm_head.weight is model.wte.weight
    assert model.wte.weight.shape[0] == VOCAB


# --- RoPE ---------------------------------------------------------------------------------------
def test_rotary_scores_depend_only_on_relative_position() -> None:
    head_dim, time, shift = 16, 10, 7
    rotary = Rotary(head_dim, max_len=time + shift)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, time, head_dim, generator=generator)
    k = torch.randn(1, 1, time, head_dim, generator=generator)
    positions = torch.arange(time)
    scores = apply_rotary(q, *rotary(positions)) @ apply_rotary(k, *rotary(positions)).mT
    shifted_q = apply_rotary(q, *rotary(positions + shift))
    shifted_k = apply_rotary(k, *rotary(positions + shift))
    torch.testing.assert_close(shifted_q @ shifted_k.mT, scores, rtol=1e-4, atol=1e-4)
    # Rotation keeps norms, but does move the vectors (otherwise the check above is empty).
    torch.testing.assert_close(shifted_q.norm(dim=-1), q.norm(dim=-1))
    assert not torch.allclose(shifted_q, apply_rotary(q, *rotary(positions)), atol=1e-3)


def test_rope_has_no_position_table_and_saves_no_angles() -> None:
    model = gpt(pos_embedding="rope")
    assert model.wpe is None
    assert not any(name.startswith("rotary") for name in model.state_dict())
    learned = gpt()
    assert model.num_params(non_embedding=False) == learned.num_params(non_embedding=False) - (
        BLOCK * 32
    )


def test_rope_needs_an_even_head_size() -> None:
    with pytest.raises(ValueError, match=r"even head size"):
        config(pos_embedding="rope", n_embd=30, n_head=2)


@torch.no_grad()
@pytest.mark.parametrize("options", [{"pos_embedding": "rope"}, ALL_OPTIONS])
def test_kv_cache_equals_the_full_forward(options: dict[str, object]) -> None:
    model = gpt(**options)
    idx = tokens(3, BLOCK)
    cache = model.new_cache(3)
    prefill, _ = model(idx[:, :5], cache=cache)
    torch.testing.assert_close(prefill, model(idx[:, :5])[0])
    for t in range(5, BLOCK):
        step, _ = model(idx[:, t : t + 1], cache=cache)
        torch.testing.assert_close(step, model(idx[:, : t + 1])[0])


@torch.no_grad()
def test_rope_left_padded_rows_compute_what_they_would_alone() -> None:
    model = gpt(pos_embedding="rope")
    rows = [tokens(1, n, seed=n)[0].tolist() for n in (7, 3, 5)]
    width = max(len(r) for r in rows)
    pad = torch.tensor([width - len(r) for r in rows])
    idx = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    batched, _ = model(idx, cache=model.new_cache(3, pad))
    for i, row in enumerate(rows):
        torch.testing.assert_close(batched[i], model(torch.tensor([row]))[0][0])


def sharp(model: GPT) -> GPT:
    """Weights scaled up so greedy argmaxes are far from ties."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(20.0)
    return model


@pytest.mark.parametrize("options", [{"pos_embedding": "rope"}, ALL_OPTIONS])
def test_kv_cache_decoding_equals_model_generate_greedy(options: dict[str, object]) -> None:
    model = sharp(gpt(3, **options))
    greedy = SamplingParams(temperature=0.0)
    for prompt in ([1, 2, 3], [4], list(range(BLOCK + 3))):
        expected = model.generate(torch.tensor([prompt]), 3 * BLOCK, temperature=0.0)
        decoder = BatchDecoder(model, [prompt], greedy, 3 * BLOCK, shift=1)
        got: list[int] = []
        while not decoder.done:
            got += [step.token for step in decoder.step()]
        assert got == expected[0, len(prompt) :].tolist()


# --- QK-norm and squared ReLU -------------------------------------------------------------------
def test_qk_norm_makes_attention_blind_to_query_and_key_scale() -> None:
    """Scaling c_attn's query/key rows changes nothing with QK-norm, and does without it."""
    idx = tokens(2, BLOCK)

    def logits_after_scaling(model: GPT) -> tuple[torch.Tensor, torch.Tensor]:
        before = model(idx, targets=idx)[0]
        with torch.no_grad():
            for block in model.h:
                block.attn.c_attn.weight[: 2 * 32].mul_(5.0)  # q and k rows, not v
        return before, model(idx, targets=idx)[0]

    before, after = logits_after_scaling(gpt(qk_norm=True))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    before, after = logits_after_scaling(gpt())
    assert not torch.allclose(after, before, atol=1e-3)


def test_qk_norm_adds_one_gain_per_head_channel() -> None:
    normed, plain = gpt(qk_norm=True), gpt()
    head_dim = 32 // 2
    assert normed.num_params() - plain.num_params() == 2 * 2 * head_dim  # layers x (q, k)
    assert normed.h[0].attn.q_norm is not None


def test_relu2_is_the_square_of_relu() -> None:
    model = gpt(mlp_activation="relu2")
    mlp = model.h[0].mlp
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    expected = mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2)
    torch.testing.assert_close(mlp(x), expected)
    assert not torch.allclose(gpt().h[0].mlp(x), expected)  # GELU differs


# --- untied head and padded vocabulary ----------------------------------------------------------
def test_untied_head_is_a_separate_parameter_that_round_trips(tmp_path: Path) -> None:
    model = gpt(tie_embeddings=False)
    assert model.lm_head.weight is not model.wte.weight
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    tied = gpt()
    # The head adds a matrix; non-embedding counts drop the token table (a lookup, no FLOPs).
    assert model.num_params(non_embedding=False) == tied.num_params(non_embedding=False) + (
        VOCAB * 32
    )
    assert model.num_params() == tied.num_params()
    _, loss = model.train()(tokens(2, BLOCK), targets=tokens(2, BLOCK, seed=2))
    assert loss is not None
    loss.backward()
    assert model.lm_head.weight.grad is not None
    assert model.wte.weight.grad is not None
    assert not torch.equal(model.lm_head.weight.grad, model.wte.weight.grad)

    save_model(model, str(tmp_path / "model.safetensors"))
    fresh = GPT(config(tie_embeddings=False))
    missing, unexpected = load_model(fresh, str(tmp_path / "model.safetensors"))
    assert not missing
    assert not unexpected
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert torch.equal(fresh.wte.weight, model.wte.weight)


def test_padded_vocab_rounds_up_and_logits_keep_the_real_vocab() -> None:
    cfg = config(vocab_multiple=64)
    assert cfg.padded_vocab_size == 64
    assert config(vocab_multiple=64, vocab_size=64).padded_vocab_size == 64
    assert config(vocab_multiple=64, vocab_size=65).padded_vocab_size == 128
    assert config().padded_vocab_size == VOCAB
    model = gpt(vocab_multiple=64)
    assert model.wte.weight.shape == (64, 32)
    assert model.lm_head.weight.shape == (64, 32)
    idx, targets = tokens(2, BLOCK), tokens(2, BLOCK, seed=2)
    logits, loss = model(idx, targets=targets)
    assert logits.shape == (2, BLOCK, VOCAB)
    assert loss is not None
    assert model(idx)[0].shape == (2, 1, VOCAB)
    # The loss is a softmax over the real vocabulary only.
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, VOCAB), targets.view(-1)))
    assert abs(loss.item() - math.log(VOCAB)) < 0.3


def test_padding_tokens_are_never_sampled() -> None:
    model = gpt(vocab_multiple=64)
    with torch.no_grad():
        model.lm_head.weight[VOCAB:] = 0.0
        model.lm_head.weight[VOCAB:, 0] = 1e4  # padding rows would win every argmax
        model.ln_f.weight.fill_(1.0)
    out = model.generate(tokens(4, 3), 40, temperature=1.0)
    assert int(out.max()) < VOCAB
    greedy = model.generate(tokens(4, 3), 10, temperature=0.0)
    assert int(greedy.max()) < VOCAB


# --- activation checkpointing -------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, ALL_OPTIONS])
def test_activation_checkpointing_gives_identical_loss_and_gradients(
    options: dict[str, object],
) -> None:
    def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = gpt(5, dropout=0.1, **options).train()
        model.activation_checkpointing = checkpointing
        torch.manual_seed(11)  # the same dropout masks in both runs
        _, loss = model(tokens(2, BLOCK), targets=tokens(2, BLOCK, seed=3))
        assert loss is not None
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    plain_loss, plain_grads = loss_and_grads(False)
    ckpt_loss, ckpt_grads = loss_and_grads(True)
    assert torch.equal(ckpt_loss, plain_loss)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=0.0, atol=0.0, msg=name)


def test_checkpointing_saves_activation_memory() -> None:
    """Fewer tensors are kept for backward: count bytes saved by autograd's pack hook."""

    def saved_bytes(checkpointing: bool) -> int:
        model = gpt(n_layer=4).train()
        model.activation_checkpointing = checkpointing
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens(4, BLOCK), targets=tokens(4, BLOCK, seed=2))
        return total

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_every_option_runs_under_bfloat16_autocast() -> None:
    """CUDA trains in bfloat16 autocast; the CPU's autocast exercises the same dtype mixing
    (a float32 norm gain on bfloat16 queries warns, and warnings are errors here)."""
    model = gpt(**ALL_OPTIONS).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(tokens(2, BLOCK), targets=tokens(2, BLOCK, seed=2))
    assert logits.dtype == torch.bfloat16
    assert loss is not None
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
