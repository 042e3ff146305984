"""The stream: an ordered list of stages, each with training text and probe sets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROBE_SETS = ("changed", "unchanged", "new")


@dataclass(frozen=True)
class Probe:
    """A probe sentence and the character span whose tokens are scored (the object / entity)."""

    text: str
    span: tuple[int, int]
    # every valid filler of the span where there are several (TempLAMA lists a fact's answers);
    # empty: the span's text is the one answer
    answers: tuple[str, ...] = ()

    @classmethod
    def whole(cls, text: str) -> Probe:
        return cls(text, (0, len(text)))

    @property
    def prompt(self) -> str:
        """The text before the span: all a left-to-right LM sees when it is to produce the span."""
        return self.text[: self.span[0]]


@dataclass(frozen=True)
class TextFiles:
    """Training text on disk, read through datasets' memory-mapped Arrow cache
    (lifelong/data/corpus.py): jsonl files with a `column` field, or csv files with that column."""

    paths: tuple[Path, ...]
    column: str = "text"
    cache_dir: str | None = None  # datasets' cache; None: its default (HF_DATASETS_CACHE)


@dataclass
class Stage:
    name: str
    train: list[str] | TextFiles
    # changed / unchanged / new; a set may be empty (the first snapshot has nothing changed)
    probes: dict[str, list[Probe]] = field(default_factory=dict)
    # training sentences about changed facts and new entities, with their knowledge spans:
    # the temporal side of TGL's gradient tracing (its control side is ordinary `train` text)
    knowledge: list[Probe] = field(default_factory=list)


@dataclass
class Stream:
    stages: list[Stage]
    # TempLAMA's protocol: also score greedy exact match and top-k accuracy of each probe's span
    accuracy_top_k: int | None = None

    def all_text(self) -> Iterator[str]:
        """Every sentence in the stream, what the tokenizer is trained on; corpora on disk are
        read from their Arrow cache, never held in memory."""
        from lifelong.data.corpus import load_corpus

        for stage in self.stages:
            if isinstance(stage.train, TextFiles):
                for batch in load_corpus(stage.train).iter(batch_size=10_000):
                    yield from (text for text in batch[stage.train.column] if text)
            else:
                yield from stage.train
            for probes in stage.probes.values():
                yield from (p.text for p in probes)
