"""LIT (Language Interpretability Tool) wrappers around a trained GPT checkpoint.

Imported only by `ml_playground.analysis.lit` once `lit-nlp` is known to be installed: this
module imports `lit_nlp` at the top, the rest of the package never does.

The three models follow LIT's own prompt-debugging convention, which its Sequence Salience
module looks for: `<name>` generates, `_<name>_salience` explains, `_<name>_tokenizer` shows
the tokens the explanation is aligned to.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lit_nlp.api import dataset as lit_dataset  # type: ignore[import-not-found,import-untyped,unused-ignore]
from lit_nlp.api import layout as lit_layout  # type: ignore[import-not-found,import-untyped,unused-ignore]
from lit_nlp.api import model as lit_model  # type: ignore[import-not-found,import-untyped,unused-ignore]
from lit_nlp.api import types as lit_types  # type: ignore[import-not-found,import-untyped,unused-ignore]

from ml_playground.analysis.evaluate import boundary_ids
from ml_playground.generate.service import GenerationSettings, LoadedModel, generate_batch

PROMPT, TARGET, RESPONSE = "prompt", "target", "response"
TOKENS, TARGET_MASK = "tokens", "target_mask"
_MODULES = lit_layout.LitModuleName

LAYOUT = lit_layout.LitCanonicalLayout(
    left={
        "Examples": [_MODULES.DataTableModule],
        "Editor": [_MODULES.SingleDatapointEditorModule],
    },
    upper={"Salience": [_MODULES.SequenceSalienceModule]},
    lower={
        "Generation": [_MODULES.GeneratedTextModule],
        "Loss": [_MODULES.ScalarModule],
    },
    layoutSettings=lit_layout.LayoutSettings(leftWidth=40),
    description="A trained ml_playground GPT: held-out lines, generation, token salience.",
)


def text_ids(loaded: LoadedModel, example: dict[str, Any]) -> list[int]:
    """The example's prompt + target as ids, cut to the model's last `block_size` tokens."""
    text = example.get(PROMPT, "") + example.get(TARGET, "")
    return loaded.tokenizer.encode(text)[-loaded.model.block_size :]


def token_strings(loaded: LoadedModel, ids: list[int]) -> list[str]:
    return [loaded.tokenizer.decode([token]) for token in ids]


def _with_context(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """A document boundary, then the ids: the boundary is context, so every id gets a loss."""
    full = boundary_ids(loaded.tokenizer)[-1:] + ids
    return torch.tensor([full], dtype=torch.long, device=loaded.device)


def token_losses(loaded: LoadedModel, ids: list[int]) -> list[float]:
    """Each token's loss in nats, given the tokens before it (and a document boundary)."""
    if not ids:
        return []
    full = _with_context(loaded, ids)
    with torch.inference_mode():
        logits, _ = loaded.model(full[:, :-1], full[:, 1:])
        losses = F.cross_entropy(logits[0].float(), full[0, 1:], reduction="none")
    return [float(value) for value in losses.cpu()]


def token_salience(
    loaded: LoadedModel, ids: list[int], mask: list[float]
) -> dict[str, list[float]]:
    """Gradient salience of each token for the loss of the `mask`ed (target) tokens.

    grad_l2 is the norm of d(loss)/d(embedding), grad_dot_input its dot product with the
    embedding (Shrikumar et al. 2017). The last token is never an input, so it scores 0.
    """
    full = _with_context(loaded, ids)
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured["embeddings"] = leaf
        return leaf

    handle = loaded.model.wte.register_forward_hook(capture)
    try:
        with torch.enable_grad():
            logits, _ = loaded.model(full[:, :-1], full[:, 1:])
            losses = F.cross_entropy(logits[0].float(), full[0, 1:], reduction="none")
            weights = torch.tensor(mask, dtype=torch.float32, device=loaded.device)
            (grads,) = torch.autograd.grad((losses * weights).sum(), captured["embeddings"])
    finally:
        handle.remove()
    embeddings = captured["embeddings"].detach()[0]
    # Input position k + 1 holds ids[k]; position 0 is the boundary.
    grad_l2 = [*grads[0].norm(dim=-1)[1:].tolist(), 0.0]
    grad_dot_input = [*(grads[0] * embeddings).sum(dim=-1)[1:].tolist(), 0.0]
    return {"grad_l2": grad_l2, "grad_dot_input": grad_dot_input}


class GenerationModel(lit_model.BatchedModel):  # type: ignore[misc]
    """Continues the prompt with the [sample] settings; scores the example's loss."""

    def __init__(self, loaded: LoadedModel, settings: GenerationSettings, batch: int = 8) -> None:
        self.loaded = loaded
        self.settings = settings
        self.batch = batch

    def description(self) -> str:
        return f"GPT from {self.loaded.checkpoint.path}"

    def max_minibatch_size(self) -> int:
        return self.batch

    def input_spec(self) -> dict[str, Any]:
        return {PROMPT: lit_types.TextSegment(), TARGET: lit_types.TextSegment(required=False)}

    def output_spec(self) -> dict[str, Any]:
        return {
            RESPONSE: lit_types.GeneratedText(parent=TARGET),
            "loss": lit_types.Scalar(),
            "bits_per_byte": lit_types.Scalar(),
        }

    def predict_minibatch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts = [example.get(PROMPT, "") for example in inputs]
        wanted = [i for i, prompt in enumerate(prompts) if prompt]
        results = (
            generate_batch(self.loaded, [prompts[i] for i in wanted], self.settings)
            if wanted
            else []
        )
        responses = dict(zip(wanted, (result.text for result in results), strict=True))
        outputs = []
        for index, example in enumerate(inputs):
            ids = text_ids(self.loaded, example)
            losses = token_losses(self.loaded, ids)
            n_bytes = len(self.loaded.tokenizer.decode(ids).encode("utf-8"))
            outputs.append(
                {
                    RESPONSE: responses.get(index, ""),
                    "loss": sum(losses) / len(losses) if losses else 0.0,
                    "bits_per_byte": sum(losses) / math.log(2) / n_bytes if n_bytes else 0.0,
                }
            )
        return outputs


class SalienceModel(lit_model.BatchedModel):  # type: ignore[misc]
    """Token salience for the target tokens LIT asks about, and each token's own loss."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def input_spec(self) -> dict[str, Any]:
        return {
            PROMPT: lit_types.TextSegment(),
            TARGET: lit_types.TextSegment(required=False),
            TARGET_MASK: lit_types.TokenScores(align="", required=False),
        }

    def output_spec(self) -> dict[str, Any]:
        return {
            TOKENS: lit_types.Tokens(parent=""),
            "grad_l2": lit_types.TokenScores(align=TOKENS),
            "grad_dot_input": lit_types.TokenScores(align=TOKENS),
            "token_loss": lit_types.TokenScores(align=TOKENS),
        }

    def predict_minibatch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any]] = []
        for example in inputs:
            ids = text_ids(self.loaded, example)
            if not ids:
                outputs.append({TOKENS: [], "grad_l2": [], "grad_dot_input": [], "token_loss": []})
                continue
            mask = [float(value) for value in (example.get(TARGET_MASK) or [])]
            if len(mask) != len(ids):  # no target chosen yet: explain the target text (or all)
                target_tokens = len(self.loaded.tokenizer.encode(example.get(TARGET, "")))
                first = len(ids) - min(target_tokens, len(ids)) if target_tokens else 0
                mask = [0.0] * first + [1.0] * (len(ids) - first)
            outputs.append(
                {
                    TOKENS: token_strings(self.loaded, ids),
                    **token_salience(self.loaded, ids, mask),
                    "token_loss": token_losses(self.loaded, ids),
                }
            )
        return outputs


class TokenizerModel(lit_model.BatchedModel):  # type: ignore[misc]
    """The tokens the salience model reports, so LIT can offer them as targets."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def input_spec(self) -> dict[str, Any]:
        return {PROMPT: lit_types.TextSegment(), TARGET: lit_types.TextSegment(required=False)}

    def output_spec(self) -> dict[str, Any]:
        return {TOKENS: lit_types.Tokens(parent="")}

    def predict_minibatch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{TOKENS: token_strings(self.loaded, text_ids(self.loaded, ex))} for ex in inputs]


def lit_models(
    loaded: LoadedModel, settings: GenerationSettings, name: str
) -> dict[str, lit_model.Model]:
    return {
        name: GenerationModel(loaded, settings),
        f"_{name}_salience": SalienceModel(loaded),
        f"_{name}_tokenizer": TokenizerModel(loaded),
    }


def lit_dataset_of(examples: list[dict[str, str]], description: str) -> lit_dataset.Dataset:
    spec = {PROMPT: lit_types.TextSegment(), TARGET: lit_types.TextSegment()}
    return lit_dataset.Dataset(spec, examples, description=description)
