"""The stream: an ordered list of stages, each with training text and probe sets."""

from __future__ import annotations

from dataclasses import dataclass, field

PROBE_SETS = ("changed", "unchanged", "new")


@dataclass(frozen=True)
class Probe:
    """A probe sentence and the character span whose tokens are scored (the object / entity)."""

    text: str
    span: tuple[int, int]

    @classmethod
    def whole(cls, text: str) -> Probe:
        return cls(text, (0, len(text)))


@dataclass
class Stage:
    name: str
    train: list[str]
    # changed / unchanged / new; a set may be empty (the first snapshot has nothing changed)
    probes: dict[str, list[Probe]] = field(default_factory=dict)
    # training sentences about changed facts and new entities, with their knowledge spans:
    # the temporal side of TGL's gradient tracing (its control side is ordinary `train` text)
    knowledge: list[Probe] = field(default_factory=list)


@dataclass
class Stream:
    stages: list[Stage]

    def all_text(self) -> list[str]:
        """Every sentence in the stream: what the tokenizer is trained on."""
        texts: list[str] = []
        for stage in self.stages:
            texts.extend(stage.train)
            for probes in stage.probes.values():
                texts.extend(p.text for p in probes)
        return texts
