"""Names vulture reports as unused that are in fact used — by a framework, a protocol or a user.

`make quality` runs vulture over src/, tests/ and benchmarks/ at 60% confidence (config in
pyproject.toml, [tool.vulture]). Tests and benchmarks count as users, and decorators that
register a function (Typer commands, FastAPI routes, pydantic validators, pytest fixtures) are
ignored there. What is left below is called by name from code vulture cannot see. Add an entry
only with a comment saying who calls it; if nothing does, delete the code instead.

The file is never imported; vulture reads it as "these names are used".
"""
# ruff: noqa: B018, F821

# --- Called by the training loop through `emit("on_<hook>", event)` (train/callbacks.Callback).
_.on_train_start
_.on_log
_.on_eval
_.on_sample
_.on_checkpoint
_.on_train_end

# --- Google's LIT calls these on a `lit_nlp.api.model.Model` (analysis/lit_models.py).
_.max_minibatch_size
_.input_spec
_.output_spec
_.predict_minibatch

# --- Request fields FastAPI fills and `model_dump()` reads (serve/app.ChatMessage).
_.role

# --- Signatures fixed by the caller: signal handlers get (signum, frame); Optimizer.step(closure).
_.frame
_.closure

# --- Enum members Typer offers as `--dtype` choices (cli/export_cmd.Dtype); chosen by value.
_.f32
_.q8_0

# --- Fields of the OpenAI completion request, accepted for compatibility (serve/app.py).
_.logprobs
_.user

# --- Attributes set on third-party objects that the library reads: Hugging Face `tokenizers`
# (pre_tokenizer, post_processor, encode_special_tokens), transformers' `generation_config`,
# PEFT's `base_model_name_or_path`, Selenium's `binary_location`.
_.pre_tokenizer
_.post_processor
_.encode_special_tokens
_.generation_config
_.base_model_name_or_path
_.binary_location

# --- pytest reads a module's `pytestmark`.
_.pytestmark

# --- A pydantic field that exists to be set (tests/unit/export/test_source.py: a "future" option).
_.sliding_window

# --- Public library API of ml_playground.variants, documented in its README, unused internally.
_.to_dicts
_.wait_async

# --- KNOWN DEAD CODE, reported to the owners: delete the code, then the entry.
_.closed  # tracking/base.InMemoryTracker: set by close(), read by nothing (`status` is)
