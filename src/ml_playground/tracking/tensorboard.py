"""TensorBoard event files in the run's `tb/` folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class TensorBoardTracker:
    def __init__(self, log_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_params(self, params: dict[str, Any]) -> None:
        # The resolved config as one text entry: readable in TensorBoard's Text tab.
        text = "```\n" + json.dumps(params, indent=2, default=str) + "\n```"
        self.writer.add_text("config", text, 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.flush()
        self.writer.close()
