"""A GPT language model in one file, after nanoGPT and the GPT-2 paper.

Pre-LayerNorm blocks, causal self-attention through `scaled_dot_product_attention` (so CUDA picks
flash or memory-efficient kernels), a 4x GELU MLP, and an output head tied to the token embedding.
Initialisation follows GPT-2: N(0, 0.02), with residual projections scaled by 1/sqrt(2 * n_layer)
so the residual stream's variance does not grow with depth.

For generation, `forward` takes an optional `KVCache`: the keys and values of the tokens already
seen are kept, so a new token costs one position's compute instead of the whole context's.
Positions are absolute (learned embeddings or rotary angles for 0..block_size-1), so a cache holds
at most `block_size` positions; the decode loop (`ml_playground.generate.decode`) rebuilds it from
a window of recent tokens when full.

Options from the speedrun literature, each off by default so the defaults are GPT-2 exactly:
rotary position embeddings (`pos_embedding="rope"`), RMS-normalised queries and keys (`qk_norm`),
squared-ReLU MLP (`mlp_activation="relu2"`), an untied output head (`tie_embeddings=False`), and
embedding/head rows padded to `vocab_multiple` (logits are cut back to the real vocabulary, so
sampling and export never see the padding). `activation_checkpointing` (set by the trainer)
recomputes each block in the backward pass instead of storing its activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ml_playground.config.schema import ModelConfig

ROPE_BASE = 10_000.0
IGNORE_INDEX = -1
"""Targets with this value are not scored (the prompt of a prompt/response pair; see
`data.loader.IGNORE_INDEX`, which is the same)."""


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own cannot drop just the bias before 2.1)."""

    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """RMSNorm with a gain, in the input's dtype: under autocast queries and keys are bfloat16,
    and a float32 gain would keep `rms_norm` off its fused kernel."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), 1e-6)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer): rotate query/key channel pairs.

    Pair i of a head is rotated by the angle `position * base^(-2i/head_dim)`. A rotation by
    angle(m) on the query and angle(n) on the key leaves their dot product depending on m - n
    only, so attention sees relative positions without a learned table. The angles of positions
    0..max_len-1 are computed once (float32, not saved: they are a function of the config).
    """

    def __init__(self, head_dim: int, max_len: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.cos: torch.Tensor
        self.sin: torch.Tensor
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for `positions` (time,) → (time, head_dim/2), or (batch, time) →
        (batch, 1, time, head_dim/2): shaped to broadcast over (batch, heads, time, pairs)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, time, head_dim) by the angles: channel i pairs with i + head_dim/2."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


Angles = tuple[torch.Tensor, torch.Tensor] | None  # rotary (cos, sin), or None without RoPE


class KVCache:
    """Every layer's keys and values for the tokens seen so far, preallocated to `max_len`.

    Rows may be left-padded to a common length (batched prompts of different lengths): `pad[b]` is
    how many leading slots of row `b` are padding. Padding slots are never attended to, and each
    row's position ids start at 0 on its first real token, so a padded row computes what it would
    alone.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        head_dim: int,
        max_len: int,
        *,
        pad: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0  # slots filled so far (the same for every row; padding counts)
        self.pad = pad if pad is not None and bool(pad.any()) else None

    def begin(self, time: int) -> tuple[torch.Tensor | None, bool]:
        """Before a forward of `time` new tokens: the attention mask to use, and `is_causal`.

        Without padding, a prefill from an empty cache is plain causal attention and a
        single-token step may see everything, so no mask is materialised in either case.
        """
        if self.length + time > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions; {self.length} used, {time} more given"
            )
        if self.pad is None and self.length == 0:
            return None, True
        if self.pad is None and time == 1:
            return None, False
        device = self.k[0].device
        query_pos = torch.arange(self.length, self.length + time, device=device)[:, None]
        key_pos = torch.arange(self.length + time, device=device)[None, :]
        allowed = key_pos <= query_pos  # (time, keys)
        mask = allowed[None, None]  # (1, 1, time, keys)
        if self.pad is not None:
            real_key = key_pos[None] >= self.pad[:, None, None]  # (batch, 1, keys)
            # A padding query attends to itself only, so no row of the mask is empty (that NaNs).
            own_slot = key_pos[None] == query_pos[None]
            mask = allowed[None] & (real_key | own_slot)
            mask = mask[:, None]  # (batch, 1, time, keys)
        return mask, False

    def positions(self, time: int, device: torch.device) -> torch.Tensor:
        """Position ids of the next `time` tokens: (time,), or (batch, time) with padding."""
        positions = torch.arange(self.length, self.length + time, device=device)
        if self.pad is None:
            return positions
        return (positions[None, :] - self.pad[:, None]).clamp(min=0)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of `layer`; return all of them so far (views, no copy)."""
        end = self.length + k.size(2)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, time: int) -> None:
        self.length += time

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows leave the batch)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        if self.pad is not None:
            pad = self.pad.index_select(0, rows)
            self.pad = pad if bool(pad.any()) else None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer  # index into a KVCache
        self.n_head = config.n_head
        self.dropout = config.dropout
        # Query, key and value for all heads in one matmul.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm: unit-RMS queries and keys keep attention logits bounded, so higher learning
        # rates stay stable (a learned gain per channel lets a head sharpen again).
        head_dim = config.n_embd // config.n_head
        self.q_norm = RMSNorm(head_dim) if config.qk_norm else None
        self.k_norm = RMSNorm(head_dim) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rotary: Angles = None,
        cache: KVCache | None = None,
        mask: tuple[torch.Tensor | None, bool] = (None, True),
    ) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (
            t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2)
            for t in (q, k, v)
        )
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            # Queries are the new tokens; keys and values are everything the cache holds.
            k, v = cache.update(self.layer, k, v)
            attn_mask, is_causal = mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.relu2 = config.mlp_activation == "relu2"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.c_fc(x)
        if self.relu2:
            # Squared ReLU (So et al. 2021, "Primer"): as good as GELU or better, and cheaper.
            # r * r, not r.square(): the same numbers, and half the backward time on CPUs.
            hidden = F.relu(hidden)
            hidden = hidden * hidden
        else:
            hidden = F.gelu(hidden)
        out: torch.Tensor = self.dropout(self.c_proj(hidden))
        return out


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rotary: Angles = None,
        cache: KVCache | None = None,
        mask: tuple[torch.Tensor | None, bool] = (None, True),
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, cache, mask)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not `IGNORE_INDEX`.

    Summed, then divided by the count of scored targets (at least 1): a batch whose targets are
    all ignored gives a loss of exactly 0 with zero gradients, where `F.cross_entropy`'s mean
    would be 0/0 = NaN and count as a bad step.
    """
    flat = targets.reshape(-1)
    total = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), flat, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (flat != IGNORE_INDEX).sum().clamp(min=1)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.vocab_size = config.vocab_size  # the real vocabulary; rows past it are padding
        self.block_size = config.block_size
        rows = config.padded_vocab_size or config.vocab_size
        self.wte = nn.Embedding(rows, config.n_embd)
        self.wpe = (
            nn.Embedding(config.block_size, config.n_embd)
            if config.pos_embedding == "learned"
            else None
        )
        self.rotary = (
            Rotary(config.n_embd // config.n_head, config.block_size)
            if config.pos_embedding == "rope"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, rows, bias=False)
        if config.tie_embeddings:
            # Weight tying (Press & Wolf 2017): one matrix embeds tokens and scores them.
            self.lm_head.weight = self.wte.weight
        # Set by the trainer (`train.activation_checkpointing`); a runtime choice, not a config.
        self.activation_checkpointing = False

        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; embedding lookups excluded by default, as in the scaling papers.

        Excluded: the position table, and the token table when it is not also the head (a
        lookup costs no FLOPs; a tied matrix does, as the head's matmul).
        """
        total = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return total
        if self.wpe is not None:
            total -= self.wpe.weight.numel()
        if not self.config.tie_embeddings:
            total -= self.wte.weight.numel()
        return total

    def new_cache(self, batch: int, pad: torch.Tensor | None = None) -> KVCache:
        """An empty KV cache for `batch` rows (`pad`: left padding per row) on the model device."""
        weight = self.wte.weight
        cfg = self.config
        return KVCache(
            cfg.n_layer,
            batch,
            cfg.n_head,
            cfg.n_embd // cfg.n_head,
            self.block_size,
            pad=pad,
            device=weight.device,
            dtype=weight.dtype,
        )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy when `targets` are given.

        Without targets only the last position's logits are computed: that is all sampling needs,
        and it skips a (T x vocab) matmul per step.

        With a `cache`, `idx` holds only the new tokens: they are appended after the `cache.length`
        tokens already cached (prefill: the whole prompt once; decode: one token per step).
        """
        _, time = idx.shape
        if cache is None:
            if time > self.block_size:
                raise ValueError(f"sequence of {time} tokens exceeds block_size {self.block_size}")
            positions = torch.arange(time, device=idx.device)
        else:
            mask = cache.begin(time)
            positions = cache.positions(time, idx.device)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        rotary = self.rotary(positions) if self.rotary is not None else None
        for block in self.h:
            if cache is not None:
                x = block(x, rotary, cache, mask)
            elif self.activation_checkpointing and self.training:
                # Keep only the block's input; recompute its inside during backward.
                x = checkpoint(block, x, rotary, use_reentrant=False)
            else:
                x = block(x, rotary)
        if cache is not None:
            cache.advance(time)
        x = self.ln_f(x)
        if targets is None:
            return self._logits(x[:, -1:, :]), None
        logits = self._logits(x)
        return logits, cross_entropy(logits, targets)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores over the real vocabulary: padding rows of the head are cut off here, so no
        softmax, sample or export ever sees a padding token."""
        logits: torch.Tensor = self.lm_head(x)
        if logits.size(-1) != self.vocab_size:
            logits = logits[..., : self.vocab_size]
        return logits

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """nanoGPT's sampling loop, without a cache: `idx` (batch, time) extended by new tokens.

        Each step re-runs the model on the last `block_size` tokens. It is the slow reference the
        KV-cache loop in `ml_playground.generate` is tested against. `temperature == 0` is greedy.
        """
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size :])
            logits = logits[:, -1, :]
            if temperature == 0.0:
                token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                token = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat([idx, token], dim=1)
        return idx

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T."""
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_head * head_dim * cfg.block_size
