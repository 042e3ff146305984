"""ECBD / ECBD-NP (Onoe et al. 2022): sentences about entities that first appear in a year.

    ROOT/<year>/np_spans_{dev,test}.json, random_spans_{dev,test}.json   (json lines)

Fields: `ex_id`, `masked_sentence` (with `<extra_id_0>`), `answer_str`, `answer_d`
({"<extra_id_0>": span}), `span_type`, `definition` (list of sentences), `year`,
`entity_span_str`, `entity_span_loc`. One stage per year: the training text is the entities'
definition sentences (with the entity mention as the knowledge span for TGL); the `new`
probes are the split's sentences with the span filled in, scored over the span's tokens only
(span perplexity: exp of the mean over examples of the mean span-token NLL).
"""

from __future__ import annotations

from pathlib import Path

from lifelong.data.jsonl import DataFormatError, numbered_jsonl
from lifelong.data.stream import Probe, Stage, Stream

FIELDS = ("ex_id", "masked_sentence", "answer_str", "definition", "entity_span_str")
MASK = "<extra_id_0>"


def filled(record: dict, where: str) -> Probe:
    sentence, span = record["masked_sentence"], record["answer_str"]
    if MASK not in sentence:
        raise DataFormatError(f"{where}: masked_sentence has no {MASK}")
    start = sentence.index(MASK)
    return Probe(sentence.replace(MASK, span, 1), (start, start + len(span)))


def mention(sentence: str, entity: str) -> Probe:
    start = sentence.find(entity)
    return Probe(sentence, (start, start + len(entity))) if start >= 0 else Probe.whole(sentence)


def load_ecbd(root: Path, years: list[str], spans: str, split: str) -> Stream:
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: ECBD directory not found: {root}")
    stages = []
    for year in years:
        path = root / year / f"{spans}_spans_{split}.json"
        if not path.exists():
            raise FileNotFoundError(f"missing ECBD file: {path}")
        records = numbered_jsonl(path, FIELDS)
        probes, definitions = [], {}
        for line, record in records:
            probes.append(filled(record, f"{path}:{line}"))
            for sentence in record["definition"]:
                definitions.setdefault(sentence, mention(sentence, record["entity_span_str"]))
        stages.append(Stage(name=year, train=list(definitions),
                            probes={"changed": [], "unchanged": [], "new": probes},
                            knowledge=list(definitions.values())))
    return Stream(stages)
