"""A fine-tuning job's files, written so that `kill -9` at any moment and the same call again resume
from the last complete epoch and end with the same result (bitwise on CPU: seeds are fixed, Trainer
checkpoints carry the optimizer, scheduler and RNG states):

  job.json                   what is being trained (a different job in the same folder is an error)
  lr-<lr>/state.json         the commit record: an epoch (its dev score, and the Trainer checkpoint
                             written after it) counts only once listed here (written by os.replace)
  lr-<lr>/checkpoint-<step>/ Trainer checkpoints; one not listed in state.json may be half written
                             and is deleted before resuming
  lr-<lr>/epoch-<e>/         the learning rate's best epoch so far (saved under a temporary name, then
                             renamed); kept once the run is finished, its checkpoints are deleted
  grid-<key>/model/          the grid's selected model (hard links to the chosen epoch's files): a
                             PEFT adapter or a transformers model directory
  grid-<key>/result.json     the training cost; once it exists, `finetune` only loads the model
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

class FineTuneStateError(ValueError):
    """An output folder that holds another job's training state."""

def write_json(path: Path, data: dict) -> None:
    """Write to a temporary file, fsync, rename over `path`: a reader sees the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)

def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

@dataclass
class TrainingRun:
    """One learning rate: its folder and the epochs committed to its state.json."""

    directory: Path
    learning_rate: float
    epochs: list[dict] = field(default_factory=list)  # one record per committed epoch, in order
    params: dict = field(default_factory=dict)  # {"trainable": n, "total": n}

    @classmethod
    def open(cls, directory: Path, learning_rate: float) -> "TrainingRun":
        state = read_json(directory / "state.json") or {}
        return cls(directory, learning_rate, state.get("epochs", []), state.get("params", {}))

    def finished(self, epochs: int) -> bool:
        return len(self.epochs) >= epochs

    def best(self) -> dict:
        """The committed epoch with the highest dev score; the earliest among equals (it cost less)."""
        return max(self.epochs, key=lambda record: (record["dev_score"], -record["epoch"]))

    def improves(self, epoch: int, score: float) -> bool:
        earlier = [record["dev_score"] for record in self.epochs if record["epoch"] < epoch]
        return not earlier or score > max(earlier)

    def epoch_dir(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch}"

    def resume_checkpoint(self) -> str | None:
        return str(self.directory / self.epochs[-1]["checkpoint"]) if self.epochs else None

    def commit(self, record: dict, write: bool) -> None:
        """Every process keeps the record; the main process (`write`) also writes it."""
        self.epochs = [r for r in self.epochs if r["epoch"] < record["epoch"]] + [record]
        if not write:
            return
        state = {"learning_rate": self.learning_rate, "params": self.params, "epochs": self.epochs}
        write_json(self.directory / "state.json", state)
        keep = self.epoch_dir(self.best()["epoch"])
        for stale in self.directory.glob("epoch-*"):
            if stale != keep:
                shutil.rmtree(stale)

    def discard_uncommitted(self) -> None:
        """Before (re)starting: drop what a killed run left half done or never committed."""
        committed = {record["checkpoint"] for record in self.epochs}
        keep = {f"epoch-{self.best()['epoch']}"} if self.epochs else set()
        for path in self.directory.glob("*"):
            stale_checkpoint = path.name.startswith("checkpoint-") and path.name not in committed
            stale_epoch = path.name.startswith("epoch-") and path.name not in keep
            if stale_checkpoint or stale_epoch or path.name.endswith(".tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

def link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of `source` made of hard links (no second copy of the weights on disk),
    built under a temporary name and renamed once complete. The epoch stays in its run, where
    another grid's selection may pick it too."""
    temporary = target.with_name(target.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    shutil.copytree(source, temporary, copy_function=os.link)
    os.replace(temporary, target)
