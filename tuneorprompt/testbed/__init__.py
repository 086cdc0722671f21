"""The bundled testbed: a small language model pretrained on a fictional world, and its tasks.

Model hubs are unreachable offline, and a random-weight model shows nothing about prompting, so
tuneorprompt ships its own small pretrained model (`model/`) and two tasks (`tasks/`) on which the
prompt-or-fine-tune question has a known, built-in answer. `build.py` regenerates them from a seed.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"
TASKS_DIR = Path(__file__).parent / "tasks"
