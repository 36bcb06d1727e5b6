"""The typed experiment config: one frozen pydantic model per section.

Every section forbids unknown keys, so a typo never silently falls back to a default. Field
descriptions double as the configuration reference, and every cross-field rule is a validator
whose message says what to change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CorpusKind = Literal["shakespeare", "file", "dir", "jsonl", "pystdlib", "digits", "mnist"]
TokenizerKind = Literal[
    "char", "bpe", "sentencepiece_bpe", "sentencepiece_unigram", "tiktoken", "hf", "pixels"
]
TRAINED_TOKENIZERS = ("bpe", "sentencepiece_bpe", "sentencepiece_unigram")
NAMED_TOKENIZERS = ("tiktoken", "hf")
DeviceKind = Literal["auto", "cpu", "cuda", "mps"]
DtypeKind = Literal["auto", "float32", "bfloat16", "float16"]


class Section(BaseModel):
    """Base for every config section: frozen, strict about unknown keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(Section):
    corpus: CorpusKind = Field(
        "shakespeare",
        description="Where the text comes from: the bundled Shakespeare plays, one file, a "
        "directory of text files, a JSONL file, the Python standard library's own source, or "
        "images as pixel tokens: 'digits' (scikit-learn's 8x8) or 'mnist' (IDX files).",
    )
    path: str | None = Field(
        None, description="File or directory for corpus 'file' / 'dir' / 'jsonl'."
    )
    glob: str = Field("*.txt", description="Which files of a 'dir' corpus to read (recursive).")
    text_field: str = Field("text", description="The JSON field holding the text ('jsonl').")
    prompt_field: str | None = Field(
        None,
        description="JSONL of prompt/response pairs: the field holding the prompt (set "
        "response_field too); each pair becomes one document.",
    )
    response_field: str | None = Field(
        None, description="JSONL of prompt/response pairs: the field holding the response."
    )
    chat_template: bool | None = Field(
        None,
        description="Format prompt/response pairs with the tokenizer's chat template: unset = "
        "when it has one, true = require one, false = plain 'prompt\\n\\nresponse'.",
    )
    errors: Literal["strict", "replace"] = Field(
        "strict",
        description="Invalid UTF-8: 'strict' stops with the file and byte offset, 'replace' "
        "substitutes U+FFFD.",
    )
    tokenizer: TokenizerKind = Field("char", description="How text becomes tokens.")
    pixel_levels: int | None = Field(
        None,
        ge=2,
        le=256,
        description="Image corpora ('digits', 'mnist'): grey levels pixels are quantized to "
        "(unset = 17, which is exact for digits' 0..16 values).",
    )
    vocab_size: int | None = Field(
        None,
        ge=32,
        le=2**32 - 1,
        description="Vocabulary size to train (bpe, sentencepiece_*); the others bring their own.",
    )
    tokenizer_name: str | None = Field(
        None,
        description="tiktoken: an encoding name or a .tiktoken file; hf: a local directory or a "
        "Hub id.",
    )
    tokenizer_sample_bytes: int = Field(
        50_000_000,
        ge=1_000,
        description="Train a bpe/sentencepiece tokenizer on at most this much text (bounds "
        "memory and time on big corpora).",
    )
    num_workers: int = Field(
        0, ge=0, description="Processes that encode text in parallel (0 = one per CPU core)."
    )
    shard_tokens: int = Field(
        100_000_000, ge=1_000, description="Tokens per output shard file before a new one starts."
    )
    max_bytes: int | None = Field(
        None,
        ge=1,
        description="Use only the first units of the corpus up to about this many bytes "
        "(a quick trial on a big corpus).",
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the text held out for validation."
    )
    seed: int = Field(1337, description="Seed of the train/val document split.")
    split: Literal["auto", "documents", "tail"] = Field(
        "auto",
        description="How validation text is held out: 'documents' (whole documents, seeded), "
        "'tail' (the last val_fraction of the corpus in order: nanoGPT's shakespeare_char "
        "split), or 'auto' (documents; each document's tail when there are fewer than 10).",
    )

    @model_validator(mode="after")
    def _path_matches_corpus(self) -> DataConfig:
        if self.corpus == "mnist" and not self.path:
            raise ValueError(
                "data.corpus='mnist' needs data.path: the directory holding MNIST's IDX files "
                "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*; optionally .gz)"
            )
        if (self.corpus in ("digits", "mnist")) != (self.tokenizer == "pixels"):
            raise ValueError(
                f"data.tokenizer='pixels' goes with an image corpus and image corpora need it "
                f"(data.corpus='{self.corpus}', data.tokenizer='{self.tokenizer}'); set both, "
                f"e.g. data.corpus='digits' data.tokenizer='pixels'"
            )
        if self.corpus in ("file", "dir", "jsonl") and not self.path:
            example = {"file": "file.txt", "dir": "folder", "jsonl": "data.jsonl"}[self.corpus]
            raise ValueError(
                f"data.corpus='{self.corpus}' needs data.path: add "
                f"data.path=/path/to/your/{example}"
            )
        if self.tokenizer in TRAINED_TOKENIZERS and self.vocab_size is None:
            raise ValueError(
                f"data.tokenizer='{self.tokenizer}' is trained on the corpus and needs "
                f"data.vocab_size (e.g. data.vocab_size=4096)"
            )
        if self.tokenizer in NAMED_TOKENIZERS and not self.tokenizer_name:
            example = "cl100k_base" if self.tokenizer == "tiktoken" else "path/to/tokenizer_dir"
            raise ValueError(
                f"data.tokenizer='{self.tokenizer}' needs data.tokenizer_name "
                f"(e.g. data.tokenizer_name={example})"
            )
        if (self.prompt_field is None) != (self.response_field is None):
            raise ValueError(
                "prompt/response pairs need both data.prompt_field and data.response_field "
                "(e.g. data.prompt_field=prompt data.response_field=response)"
            )
        if self.prompt_field is not None and self.corpus != "jsonl":
            raise ValueError(
                f"data.prompt_field needs data.corpus='jsonl' (it is '{self.corpus}'); unset "
                f"data.prompt_field and data.response_field for plain text"
            )
        return self


class ModelConfig(Section):
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention heads per block.")
    n_embd: int = Field(128, ge=1, description="Width of the residual stream.")
    block_size: int = Field(64, ge=1, description="Context length in tokens.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in attention and MLP.")
    bias: bool = Field(False, description="Bias in Linear and LayerNorm layers (GPT-2: true).")
    vocab_size: int | None = Field(
        None, ge=1, description="Set from the prepared tokenizer; leave unset in presets."
    )
    pos_embedding: Literal["learned", "rope"] = Field(
        "learned",
        description="Positions: learned absolute embeddings (GPT-2) or rotary embeddings "
        "applied to queries and keys (RoPE).",
    )
    qk_norm: bool = Field(
        False, description="RMS-normalise queries and keys per head before attention."
    )
    mlp_activation: Literal["gelu", "relu2"] = Field(
        "gelu", description="MLP nonlinearity: GELU (GPT-2) or squared ReLU."
    )
    tie_embeddings: bool = Field(
        True, description="Share one matrix between the token embedding and the output head."
    )
    vocab_multiple: int = Field(
        1,
        ge=1,
        description="Pad the embedding and head rows to a multiple of this (64: faster GPU "
        "matmuls); logits are cut back to vocab_size. 1 = no padding.",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head} "
                f"(each head gets n_embd / n_head dimensions)"
            )
        if self.pos_embedding == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(
                f"model.pos_embedding='rope' needs an even head size, but n_embd / n_head = "
                f"{self.n_embd // self.n_head}; change model.n_embd or model.n_head"
            )
        return self

    @property
    def padded_vocab_size(self) -> int | None:
        """Rows of the embedding and head: vocab_size rounded up to `vocab_multiple`."""
        if self.vocab_size is None:
            return None
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class TrainConfig(Section):
    batch_size: int = Field(12, ge=1, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches (each a distinct draw) summed into one step."
    )
    max_iters: int = Field(2000, ge=0, description="Optimizer steps to train in total.")
    learning_rate: float = Field(1e-3, gt=0.0, description="Peak learning rate.")
    min_lr: float = Field(1e-4, ge=0.0, description="Learning rate at the end of cosine decay.")
    warmup_iters: int = Field(100, ge=0, description="Linear warmup steps.")
    lr_decay_iters: int | None = Field(
        None, ge=1, description="Step where cosine decay reaches min_lr (default: max_iters)."
    )
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay.")
    beta1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.99, gt=0.0, lt=1.0, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0.0, description="Clip gradient norm to this (0 = off).")
    eval_interval: int = Field(250, ge=1, description="Steps between train/val loss estimates.")
    eval_iters: int = Field(20, ge=1, description="Batches averaged per loss estimate.")
    log_interval: int = Field(10, ge=1, description="Steps between progress updates.")
    checkpoint_interval: int = Field(
        250, ge=1, description="Steps between saves of checkpoints/last."
    )
    device: DeviceKind = Field("auto", description="auto picks cuda > mps > cpu.")
    dtype: DtypeKind = Field(
        "auto", description="auto: bfloat16 on CUDA when supported, float32 elsewhere."
    )
    compile: bool = Field(False, description="torch.compile the model where it can work.")
    seed: int = Field(1337, description="Seed of weights init, batch order and dropout.")
    run_name: str = Field(
        "main", pattern=r"^[A-Za-z0-9._-]+$", description="Run directory under runs/<experiment>/."
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Keep an exponential moving average of the weights (e.g. 0.999); it is "
        "evaluated, saved as ema.safetensors and usable with `sample --weights ema`.",
    )
    early_stop_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a new best val loss."
    )
    keep_last: int = Field(
        1, ge=1, description="How many `last` checkpoints to keep (older ones as last-<iter>)."
    )
    keep_best: int = Field(
        1, ge=1, description="How many `best` checkpoints to keep (older ones as best-<iter>)."
    )
    max_bad_steps: int = Field(
        10, ge=0, description="Steps with a NaN/Inf loss skipped before the run is aborted."
    )
    sample_interval: int = Field(
        0,
        ge=0,
        description="Every N steps write a sample of the [sample] prompt to samples/ and "
        "TensorBoard (0 = off).",
    )
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw",
        description="AdamW for everything, or Muon (orthogonalised momentum) for the hidden "
        "weight matrices with AdamW for embeddings, head, gains and biases.",
    )
    muon_learning_rate: float = Field(
        0.02, gt=0.0, description="Muon's peak learning rate (follows the same schedule)."
    )
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="Muon's momentum.")
    muon_weight_decay: float = Field(
        0.0, ge=0.0, description="Muon's decoupled weight decay on the hidden matrices."
    )
    lr_schedule: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="After warmup: cosine decay to min_lr, or warmup-stable-decay (hold the "
        "peak, then decay linearly to min_lr over the last wsd_decay_fraction of the run).",
    )
    wsd_decay_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="Share of the run spent decaying (lr_schedule='wsd')."
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each block's activations in the backward pass: less memory "
        "(bigger batches or models), about a third more compute.",
    )
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(
        "default",
        description="torch.compile mode when train.compile is on (reduce-overhead: CUDA graphs).",
    )
    train_on_prompt: bool = Field(
        False,
        description="Prompt/response pairs: also score the prompt (and chat-template) tokens. "
        "Off: the loss, validation and `evaluate` cover only the response tokens (litgpt's "
        "mask_prompt, torchtune's train_on_input=False).",
    )

    @model_validator(mode="after")
    def _schedule_is_consistent(self) -> TrainConfig:
        if self.min_lr > self.learning_rate:
            raise ValueError(
                f"train.min_lr={self.min_lr} is above train.learning_rate={self.learning_rate}; "
                f"lower min_lr or raise learning_rate"
            )
        decay = self.lr_decay_iters if self.lr_decay_iters is not None else self.max_iters
        if self.lr_decay_iters is not None and decay < self.warmup_iters:
            raise ValueError(
                f"train.lr_decay_iters={decay} is shorter than train.warmup_iters="
                f"{self.warmup_iters}; decay must end after warmup"
            )
        return self

    @property
    def decay_iters(self) -> int:
        """Where cosine decay ends: `lr_decay_iters`, or the whole run."""
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.max_iters


class SampleConfig(Section):
    prompt: str = Field("\n", description="Text the samples continue.")
    max_new_tokens: int = Field(500, ge=1, description="Tokens generated per sample.")
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy (deterministic).")
    top_k: int = Field(200, ge=0, description="Keep only the k most likely tokens (0 = off).")
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Nucleus sampling: keep the smallest set with mass p."
    )
    num_samples: int = Field(1, ge=1, description="Independent samples to draw.")
    seed: int = Field(1337, description="Seed for sampling.")
    checkpoint: str = Field(
        "best", description="'best', 'last', or a path to a checkpoint directory."
    )
    weights: Literal["model", "ema"] = Field(
        "model", description="Sample with the trained weights or their moving average (EMA)."
    )
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="CTRL repetition penalty on tokens already seen (1 = off)."
    )
    stop: list[str] = Field(
        default_factory=list, description="Strings that end a sample (excluded from the text)."
    )
    min_new_tokens: int = Field(
        0, ge=0, description="No end-of-text before this many tokens (tokenizers with eot)."
    )
    chat: bool = Field(
        False,
        description="Send the prompt as a user turn through the tokenizer's chat template, "
        "assistant header included: how a fine-tune on chat-templated pairs saw its prompts.",
    )


class TrackingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard scalars to the run's tb/.")
    mlflow: bool = Field(
        False, description="Log params, metrics and samples to MLflow (extra `track`)."
    )
    mlflow_uri: str | None = Field(
        None,
        description="Tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db.",
    )
    mlflow_experiment: str | None = Field(
        None, description="MLflow experiment name (default: the experiment's name)."
    )
    mlflow_parent_run_id: str | None = Field(
        None,
        description="Nest this run under that MLflow run (a sweep sets it: one parent run, a "
        "child run per branch).",
    )


class ServeConfig(Section):
    host: str = Field(
        "127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server to the network."
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    api_key: str | None = Field(
        None,
        min_length=1,
        description="Require `Authorization: Bearer <key>` on /v1/* (default: no auth).",
    )
    max_tokens_cap: int = Field(
        1024, ge=1, description="Largest `max_tokens` one completion request may ask for."
    )
    max_concurrency: int = Field(
        1,
        ge=1,
        description="Generations running at once on the shared model; further requests queue.",
    )
    checkpoint: str = Field(
        "best", description="'best', 'last', or a path to a checkpoint directory."
    )
    weights: Literal["model", "ema"] = Field(
        "model", description="Serve the trained weights or their moving average (EMA)."
    )


class HFConfig(Section):
    """A pretrained Hugging Face causal LM to fine-tune (`ml-playground finetune`)."""

    model: str | None = Field(
        None,
        description="A local model directory or a Hugging Face Hub id (e.g. "
        "Qwen/Qwen2.5-1.5B); setting it makes the experiment a fine-tune.",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit of hf.model (Hub ids only)."
    )
    dtype: DtypeKind = Field(
        "auto",
        description="Dtype of the frozen base weights: auto = bfloat16 on CUDA (when supported) "
        "and MPS, float32 on the CPU.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% slower."
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base weights in 4-bit NF4 (needs CUDA + bitsandbytes)."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with a Hub repo (only for repos you trust)."
    )


class LoRAConfig(Section):
    """Low-rank adapters (Hu et al. 2021) trained on top of the frozen [hf] model, via PEFT."""

    r: int = Field(16, ge=1, description="Rank of each adapter's A·B update.")
    alpha: int = Field(32, ge=1, description="Scale of the update: alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt; unset = per architecture (llama, qwen2, gemma3, "
        "mistral: q/k/v/o_proj; gpt2: c_attn, c_proj).",
    )
    mlp: bool = Field(
        False,
        description="With the default target_modules, adapt the MLP too (gate/up/down_proj; "
        "gpt2: c_fc).",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases train alongside the adapters."
    )

    @model_validator(mode="after")
    def _targets_are_named(self) -> LoRAConfig:
        if self.target_modules is not None and not all(self.target_modules):
            raise ValueError(
                "lora.target_modules must list module names (e.g. "
                "lora.target_modules=['q_proj','v_proj']), or be left unset for the default"
            )
        return self


class ExperimentConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="Experiment name.")
    description: str = Field("", description="One line shown by `experiments list`.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()
    hf: HFConfig = HFConfig()
    lora: LoRAConfig = LoRAConfig()

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_from_hf_model(cls, data: Any) -> Any:
        """A fine-tune tokenizes with its model's own tokenizer: `data.tokenizer='hf'` and
        `data.tokenizer_name=<hf.model>` unless given, so `hf.model=/path` is the one setting."""
        if not isinstance(data, dict) or not isinstance(data.get("hf"), dict):
            return data
        model = data["hf"].get("model")
        section = data.get("data", {})
        if not isinstance(model, str) or not isinstance(section, dict):
            return data
        section = {"tokenizer": "hf", **section}
        if section["tokenizer"] == "hf":
            section.setdefault("tokenizer_name", model)
        return {**data, "data": section}

    @model_validator(mode="after")
    def _finetune_is_consistent(self) -> ExperimentConfig:
        if self.hf.model is None:
            return self
        if self.data.tokenizer != "hf":
            raise ValueError(
                f"hf.model is set, so the text is tokenized by the model's own tokenizer; drop "
                f"data.tokenizer='{self.data.tokenizer}' (or set data.tokenizer='hf')"
            )
        if self.train.ema_decay is not None:
            raise ValueError(
                "train.ema_decay is not supported when fine-tuning with LoRA (hf.model is set); "
                "unset train.ema_decay"
            )
        if self.hf.load_in_4bit and self.train.device in ("cpu", "mps"):
            raise ValueError(
                f"hf.load_in_4bit needs CUDA (bitsandbytes) but train.device="
                f"'{self.train.device}'; set hf.load_in_4bit=false or train.device=cuda"
            )
        return self
