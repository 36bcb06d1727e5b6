"""`ml-playground analyze`: a trained checkpoint in LIT, the Language Interpretability Tool.

LIT (`pip install 'ml_playground[lit]'`) is optional and heavy, so nothing here imports it at
module level: `require_lit()` imports it on demand and turns its absence into one actionable
line (exit 2). What LIT shows:

- a dataset of held-out lines: passages of the prepared validation split, the first line as
  the prompt and the rest as the target;
- generation with the [sample] settings, compared with the target, plus each example's loss
  and bits per byte;
- token salience (gradient norm and gradient x input) of any target span chosen in the
  Sequence Salience module, and each token's own loss (`token_loss`).

    app = lit_app_for_run(config, workdir, examples=200, say=print)
    serve_lit(app, "127.0.0.1", 5432, print)
"""

from __future__ import annotations

import importlib
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.analysis.evaluate import check_dataset_matches, resolve_run_checkpoint
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import require_dataset, split_files
from ml_playground.errors import MLPlaygroundError
from ml_playground.generate.service import GenerationSettings, LoadedModel, load_for_inference

LIT_MISSING = (
    "`analyze` needs LIT, which is not installed: pip install 'ml_playground[lit]' "
    "(lit-nlp pins numpy<2, so give it its own virtual environment; see "
    "src/ml_playground/analysis/README.md)"
)
# Validation tokens read to find held-out passages (enough for hundreds of examples).
_HELDOUT_TOKENS = 200_000


def require_lit() -> None:
    """Import lit_nlp, or raise the one-line `LIT_MISSING` error.

    LIT's dependencies (shap on matplotlib) emit deprecation warnings about each other while
    importing; nothing a user of ours can act on, so they are silenced for the import only.
    """
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            importlib.import_module("lit_nlp.app")
    except ImportError:
        raise MLPlaygroundError(LIT_MISSING) from None


def heldout_examples(
    loaded: LoadedModel, directory: Path, info: dict[str, Any], limit: int = 200
) -> list[dict[str, str]]:
    """Passages of the validation split as {prompt: first line, target: the rest}.

    Passages are separated by blank lines (speeches, paragraphs) or end-of-text; each is cut to
    the model's `block_size` tokens, so salience covers all of it. Passages of one line come
    last, as prompts without a target, only when there are too few longer ones.
    """
    tokenizer = loaded.tokenizer
    path = split_files(directory, info, "val")[0]
    tokens = np.asarray(np.memmap(path, dtype=np.dtype(info["dtype"]), mode="r")[:_HELDOUT_TOKENS])
    if tokenizer.eot_id is not None:
        documents = np.split(tokens, np.flatnonzero(tokens == tokenizer.eot_id))
        texts = [
            tokenizer.decode([t for t in doc.tolist() if t != tokenizer.eot_id])
            for doc in documents
        ]
    else:
        texts = [tokenizer.decode(tokens.tolist())]
    examples: list[dict[str, str]] = []
    single_lines: list[dict[str, str]] = []  # no target to compare with: used only to fill up
    for text in texts:
        for passage in text.split("\n\n"):
            ids = tokenizer.encode(passage.strip("\n"))[: loaded.model.block_size]
            passage = tokenizer.decode(ids)
            if not passage.strip():
                continue
            prompt, newline, target = passage.partition("\n")
            example = {"prompt": prompt + newline, "target": target}
            (examples if target.strip() else single_lines).append(example)
            if len(examples) >= limit:
                return examples
    return (examples + single_lines)[:limit]


def lit_app_for_run(
    config: ExperimentConfig, workdir: Path, examples: int, say: Callable[[str], None]
) -> Any:
    """The LIT app for a run's checkpoint (`[sample].checkpoint`) and its validation split."""
    require_lit()  # before minutes of loading, not after
    path = resolve_run_checkpoint(config, workdir, config.sample.checkpoint, say)
    loaded = load_for_inference(path, config.train.device, config.sample.weights)
    directory, info = require_dataset(workdir, config.name)
    check_dataset_matches(loaded, directory, info)
    rows = heldout_examples(loaded, directory, info, examples)
    if not rows:
        raise MLPlaygroundError(f"{directory} has no held-out text to show")
    say(f"LIT: {path} (iter {loaded.checkpoint.state.get('iter')}), {len(rows)} held-out passages")
    settings = GenerationSettings.from_sample_config(config.sample)
    return build_lit_app(loaded, rows, settings, config.name)


def build_lit_app(
    loaded: LoadedModel,
    examples: list[dict[str, str]],
    settings: GenerationSettings,
    name: str,
) -> Any:
    """The LIT WSGI application (`lit_nlp.app.LitApp`) for one checkpoint and its examples."""
    require_lit()
    from lit_nlp import app as lit_app  # type: ignore[import-not-found,import-untyped,unused-ignore]

    from ml_playground.analysis.lit_models import LAYOUT, lit_dataset_of, lit_models

    client_root = Path(lit_app.__file__).parent / "client" / "build" / "default"
    return lit_app.LitApp(
        models=lit_models(loaded, settings, name),
        datasets={"heldout": lit_dataset_of(examples, "held-out lines of the validation split")},
        layouts={"ml_playground": LAYOUT},
        default_layout="ml_playground",
        client_root=str(client_root),
        page_title=f"ml_playground · {name}",
        onboard_start_doc=(
            f"# {name}\n\nHeld-out lines of the validation split; pick one, then select a span "
            "of the text in the Salience module to see which earlier tokens it depends on."
        ),
        warm_start=0.0,
    )


def serve_lit(app: Any, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve `app` until Ctrl-C; a taken port is a one-line user error, port 0 picks one."""
    from werkzeug.serving import make_server

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:  # bind here, so the error is ours (werkzeug would print and exit) and port 0 works
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MLPlaygroundError(f"cannot listen on {host}:{port}: {reason}") from None
    bound = sock.getsockname()[1]
    server = make_server(host, bound, app, threaded=False, fd=sock.fileno())
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    say(f"LIT on http://{shown}:{bound}/ (Ctrl-C stops it)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        sock.close()
