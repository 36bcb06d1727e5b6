"""`export ollama`: a directory `ollama create` turns into a local model.

    <name>-<dtype>.gguf   the model (see `export/gguf.py`)
    Modelfile             FROM the GGUF; PARAMETERs from `[sample]`; a plain-completion template
    README.md             how to create and run it
    SHA256SUMS            `sha256sum -c SHA256SUMS` checks the three files above

Our models are base models that continue text, so the template passes the prompt through
unchanged (`{{ .Prompt }}`) instead of a chat format. `num_ctx` is the model's `block_size`:
Ollama must not feed it more positions than it has embeddings for.
"""

from __future__ import annotations

import re
from pathlib import Path

from ml_playground.config.schema import SampleConfig
from ml_playground.export.common import (
    ExportError,
    ExportReport,
    check_dir_destination,
    list_files,
    sha256_file,
    staged_dir,
)
from ml_playground.export.gguf import (
    GGUFDtype,
    default_file_name,
    gguf_notes,
    verify_gguf,
    write_gguf,
)
from ml_playground.generate.service import LoadedModel

CHECKSUMS = "SHA256SUMS"


def ollama_model_name(name: str) -> str:
    """A name `ollama create` accepts: lower case letters, digits, '.', '-' and '_'."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return cleaned or "ml-playground-model"


def _quote(value: str) -> str:
    """A Modelfile argument: "..." for one line, triple quotes when it holds a newline or quote."""
    if '"""' in value:
        raise ExportError(f'stop string {value!r} holds """, which a Modelfile cannot quote')
    if "\n" in value or '"' in value or "\\" in value:
        return f'"""{value}"""'
    return f'"{value}"'


def modelfile(gguf_name: str, sample: SampleConfig, block_size: int) -> str:
    """The Modelfile text: the model file, sampling parameters from `[sample]`, a template."""
    lines = [
        "# Built by `ml-playground export ollama`; parameters come from the experiment's [sample].",
        f"FROM ./{gguf_name}",
        "",
        'TEMPLATE """{{ .Prompt }}"""',
        f"PARAMETER num_ctx {block_size}",
        f"PARAMETER num_predict {sample.max_new_tokens}",
        f"PARAMETER temperature {sample.temperature:g}",
    ]
    if sample.top_k:
        lines.append(f"PARAMETER top_k {sample.top_k}")
    if sample.top_p is not None:
        lines.append(f"PARAMETER top_p {sample.top_p:g}")
    lines.append(f"PARAMETER repeat_penalty {sample.repetition_penalty:g}")
    lines += [f"PARAMETER stop {_quote(stop)}" for stop in sample.stop]
    return "\n".join(lines) + "\n"


def readme(model_name: str, gguf_name: str, prompt: str, block_size: int) -> str:
    shown = prompt.replace("\n", "\\n").replace('"', '\\"') or "Once upon a time"
    return f"""# {model_name} for Ollama

A small GPT-2-architecture model exported by `ml-playground export ollama`
(`{gguf_name}`, context {block_size} tokens). It continues text; it is not a chat model.

```sh
sha256sum -c {CHECKSUMS}                 # the files arrived intact
ollama create {model_name} -f Modelfile
ollama run {model_name} "{shown}"
```

The sampling defaults (temperature, top_k, top_p, repeat_penalty, stop, num_ctx) are in
`Modelfile`; change them there, or per request (`/set parameter temperature 0` in
`ollama run`). The same GGUF file also runs in llama.cpp:
`llama-cli -m {gguf_name} -p "{shown}" -n 100 --temp 0`.
"""


def export_ollama(
    loaded: LoadedModel,
    target: Path,
    name: str,
    dtype: GGUFDtype,
    sample: SampleConfig,
    force: bool,
) -> ExportReport:
    """Write GGUF + Modelfile + README + SHA256SUMS to `target`, check them, move them there."""
    check_dir_destination(target, force)
    report = ExportReport(target)
    model_name = ollama_model_name(name)
    gguf_name = default_file_name(model_name, dtype)
    block_size = loaded.model.block_size
    with staged_dir(target) as staging:
        vocab, tensors = write_gguf(staging / gguf_name, loaded, name, dtype, sample)
        report.checks += verify_gguf(staging / gguf_name, loaded.model, vocab, tensors)
        (staging / "Modelfile").write_text(modelfile(gguf_name, sample, block_size), "utf-8")
        (staging / "README.md").write_text(
            readme(model_name, gguf_name, sample.prompt, block_size), "utf-8"
        )
        names = [gguf_name, "Modelfile", "README.md"]
        sums = "".join(f"{sha256_file(staging / file)}  {file}\n" for file in names)
        (staging / CHECKSUMS).write_text(sums, "utf-8")
        report.checks.append(verify_checksums(staging))
        report.notes += gguf_notes(vocab, tensors, dtype)
    report.files = [(target / path, size) for path, size in list_files(target)]
    report.notes.append(f"next: cd {target} && ollama create {model_name} -f Modelfile")
    return report


def verify_checksums(directory: Path) -> str:
    """Re-read every file SHA256SUMS names and compare (what `sha256sum -c` does)."""
    lines = (directory / CHECKSUMS).read_text("utf-8").splitlines()
    for line in lines:
        digest, file = line.split("  ", 1)
        if sha256_file(directory / file) != digest:
            raise ExportError(f"{directory / file} does not match its SHA256SUMS entry")
    return f"checksums: {len(lines)} files match {CHECKSUMS}"
