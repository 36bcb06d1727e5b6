"""`prepare` writes a loss mask beside the tokens of prompt/response pairs: 1 on exactly the
response tokens (and the separator that ends them), 0 on the prompt; plain text gets none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.config.schema import DataConfig
from ml_playground.data.prepare import (
    mask_files,
    prepare_dataset,
    response_mask,
    split_files,
)
from ml_playground.data.tokenizers import load_tokenizer


def write_pairs(path: Path, count: int) -> list[tuple[str, str]]:
    """`count` pairs whose prompt and response differ in length and letters."""
    pairs = [
        (f"what say you {i}?" + " now" * (i % 3), f"good night {i}" + "!" * (i % 4))
        for i in range(count)
    ]
    lines = [json.dumps({"q": prompt, "a": response}) + "\n" for prompt, response in pairs]
    path.write_text("".join(lines), "utf-8")
    return pairs


def pairs_config(path: Path, **extra: object) -> DataConfig:
    return DataConfig(
        corpus="jsonl",
        path=str(path),
        prompt_field="q",
        response_field="a",
        **extra,
    )


def read_split(
    directory: Path, info: dict[str, object], split: str
) -> tuple[np.ndarray, np.ndarray]:
    files = mask_files(directory, info, split)
    assert files is not None
    tokens = np.concatenate(
        [np.fromfile(f, dtype=str(info["dtype"])) for f in split_files(directory, info, split)]
    )
    mask = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files])
    return tokens, mask


def test_char_mask_marks_exactly_the_responses_and_their_separator(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    result = prepare_dataset(pairs_config(tmp_path / "pairs.jsonl"), tmp_path / "work", "qa")
    info = result.info
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    assert info["split"] == "document"
    assert set(info["loss_mask"]) == {"train", "val"}
    seen = 0
    for split in ("train", "val"):
        tokens, mask = read_split(result.directory, info, split)
        assert mask.shape == tokens.shape
        assert set(np.unique(mask).tolist()) == {0, 1}
        text = tokenizer.decode(tokens.tolist())
        # The split's pairs, in the order prepare wrote them (manifest order).
        mine = [(p, r) for p, r in pairs if f"{p}\n\n{r}\n\n" in text]
        seen += len(mine)
        assert text == "".join(f"{p}\n\n{r}\n\n" for p, r in mine)
        assert tokenizer.decode(tokens[mask == 1].tolist()) == "".join(f"{r}\n\n" for _, r in mine)
        assert tokenizer.decode(tokens[mask == 0].tolist()) == "".join(f"{p}\n\n" for p, _ in mine)
        assert info[f"{split}_response_tokens"] == int(mask.sum())
        assert info[f"{split}_response_bytes"] == sum(len(r.encode()) + 2 for _, r in mine)
    assert seen == len(pairs)


def test_tail_split_masks_each_half(tmp_path: Path) -> None:
    """Fewer than 10 pairs: each pair's tail is held out; the cut may fall in the prompt."""
    pairs = [("ab", "cdefghijklmnopqrstuvwxyz"), ("abcdefghijklmnopqrstuvwxyz", "c")]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"q": p, "a": r}) + "\n" for p, r in pairs), "utf-8")
    result = prepare_dataset(pairs_config(path, val_fraction=0.2), tmp_path / "work", "qa")
    assert result.info["split"] == "tail"
    expected: dict[str, list[int]] = {"train": [], "val": []}
    for prompt, response in pairs:
        text, start = f"{prompt}\n\n{response}", len(prompt) + 2
        cut = int(len(text) * 0.8)
        head = [0] * min(start, cut) + [1] * max(cut - start, 0)
        expected["train"] += head + [int(cut >= start)] * 2
        expected["val"] += [0] * max(start - cut, 0) + [1] * (len(text) - max(cut, start)) + [1, 1]
    for split in ("train", "val"):
        _, mask = read_split(result.directory, result.info, split)
        assert mask.tolist() == expected[split]
    # The second pair's cut falls in its prompt: its first half scores nothing, not even the stop.
    assert expected["train"][-3:] == [0, 0, 0]


def test_bpe_mask_scores_the_response_tokens(tmp_path: Path) -> None:
    """A trained BPE: each pair's scored tokens decode to its response (and end-of-text),
    plus at most the separator characters a token shares with it."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40)
    config = pairs_config(tmp_path / "pairs.jsonl", tokenizer="bpe", vocab_size=300)
    result = prepare_dataset(config, tmp_path / "work", "qa")
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    eot = tokenizer.eot_id
    assert eot is not None
    for split in ("train", "val"):
        tokens, mask = read_split(result.directory, result.info, split)
        ends = np.flatnonzero(tokens == eot)
        assert mask[ends].all()  # the end-of-text after each response teaches stopping
        starts = np.concatenate([[0], ends[:-1] + 1])
        for start, end in zip(starts, ends, strict=True):
            doc, scored = tokens[start:end], mask[start:end]
            text = tokenizer.decode(doc.tolist())
            prompt, response = text.split("\n\n", 1)
            assert (prompt, response) in pairs
            # Scored tokens are one suffix of the document, the prompt's its prefix.
            first = int(np.argmax(scored))
            assert scored[first:].all()
            assert not scored[:first].any()
            assert tokenizer.decode(doc[first:].tolist()).lstrip("\n") == response
            assert prompt in tokenizer.decode(doc[:first].tolist())


def test_masks_follow_the_token_shards(tmp_path: Path) -> None:
    write_pairs(tmp_path / "pairs.jsonl", 120)
    config = pairs_config(tmp_path / "pairs.jsonl", shard_tokens=1000)
    result = prepare_dataset(config, tmp_path / "work", "qa")
    info = result.info
    tokens = split_files(result.directory, info, "train")
    masks = mask_files(result.directory, info, "train")
    assert masks is not None
    assert len(tokens) == len(masks) > 1
    assert [m.name for m in masks] == [f"train_mask-{i:05d}.bin" for i in range(len(masks))]
    for token_file, mask_file in zip(tokens, masks, strict=True):
        assert token_file.stat().st_size == 2 * mask_file.stat().st_size  # uint16 vs uint8
    assert [s["tokens"] for s in info["loss_mask"]["train"]] == [
        s["tokens"] for s in info["shards"]["train"]
    ]


def test_plain_text_has_no_mask(corpus_file: Path, tmp_path: Path) -> None:
    result = prepare_dataset(DataConfig(corpus="file", path=str(corpus_file)), tmp_path, "plain")
    assert "loss_mask" not in result.info
    assert "train_response_tokens" not in result.info
    assert mask_files(result.directory, result.info, "train") is None
    assert not list(result.directory.glob("*_mask*"))


def test_pairs_prepared_before_masks_are_prepared_again(tmp_path: Path) -> None:
    write_pairs(tmp_path / "pairs.jsonl", 12)
    config = pairs_config(tmp_path / "pairs.jsonl")
    first = prepare_dataset(config, tmp_path / "work", "qa")
    assert prepare_dataset(config, tmp_path / "work", "qa").skipped
    info_path = first.directory / "dataset.json"
    old = json.loads(info_path.read_text("utf-8"))
    del old["loss_mask"]  # as an older version wrote it
    info_path.write_text(json.dumps(old), "utf-8")
    again = prepare_dataset(config, tmp_path / "work", "qa")
    assert not again.skipped
    assert "loss_mask" in again.info


@pytest.mark.parametrize(
    ("ids", "prompt", "expected"),
    [
        ([5, 6, 7, 8], [5, 6], [0, 0, 1, 1]),
        ([5, 6, 7, 8], [5, 9], [0, 1, 1, 1]),  # the boundary token merged: scored
        ([5, 6], [5, 6, 7], [0, 0]),
        ([5, 6], [], [1, 1]),
    ],
)
def test_response_mask_is_the_part_after_the_shared_prefix(
    ids: list[int], prompt: list[int], expected: list[int]
) -> None:
    assert response_mask(ids, prompt).tolist() == expected
