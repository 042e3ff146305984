"""ECBD / ECBD-NP (Onoe et al. 2022): sentences about entities that first appear in a year.

    ROOT/<year>/np_spans_{dev,test}.json, random_spans_{dev,test}.json   (json lines)

Fields (github.com/yasumasaonoe/ecbd README): `ex_id`, `masked_sentence` (with `<extra_id_0>`),
`answer_str` (the T5 target `<extra_id_0> span <extra_id_1>`), `answer_d` ({"<extra_id_0>": span}),
`span_type`, `definition` (sentences with the entity marked by [ENT_START] ... [ENT_END]), `year`,
`entity_span_str`, `entity_span_loc` (token indices). As ECBD's GPT evaluation does, a probe is
the masked sentence with `answer_d`'s span filled in, scored over the span's tokens only (span
perplexity: exp of the mean over examples of the mean span-token NLL). One stage per year: the
training text is the entities' definition sentences, cleaned as ECBD cleans them (markers and
"(')" dropped, whitespace collapsed), with the entity mention as the knowledge span for TGL.
"""

from __future__ import annotations

import re
from pathlib import Path

from lifelong.data.jsonl import DataFormatError, numbered_jsonl
from lifelong.data.stream import Probe, Stage, Stream

FIELDS = ("ex_id", "masked_sentence", "answer_d", "definition", "entity_span_str")
MASK = "<extra_id_0>"
MARKED = re.compile(r"\[ENT_START\](.*?)\[ENT_END\]")


def filled(record: dict, where: str) -> Probe:
    sentence, gold = record["masked_sentence"], record["answer_d"]
    span = gold.get(MASK) if isinstance(gold, dict) else None
    if MASK not in sentence:
        raise DataFormatError(f"{where}: masked_sentence has no {MASK}")
    if not isinstance(span, str) or not span.strip():
        raise DataFormatError(f"{where}: answer_d must map {MASK} to the gold span, a non-empty string")
    start = sentence.index(MASK)
    return Probe(sentence.replace(MASK, span, 1), (start, start + len(span)))


def clean(sentence: str) -> str:
    """ECBD's own clean-up of definition sentences (data_construction/data_utils.py)."""
    sentence = sentence.strip().replace("[ENT_START]", "").replace("[ENT_END]", "").replace("(')", "")
    return re.sub(r"\s+", " ", sentence)


def mention(sentence: str, entity: str) -> Probe:
    """The cleaned sentence with the entity mention (or else the first marked span) as its span."""
    text = clean(sentence)
    marked = MARKED.search(sentence)
    for name in (entity, clean(marked.group(1)) if marked else None):
        if name and (start := text.find(name)) >= 0:
            return Probe(text, (start, start + len(name)))
    return Probe.whole(text)


def year_file(root: Path, year: str, spans: str, split: str) -> Path:
    return root / year / f"{spans}_spans_{split}.json"


def load_ecbd(root: Path, years: list[str], spans: str, split: str) -> Stream:
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: ECBD directory not found: {root}")
    stages = []
    for year in years:
        path = year_file(root, year, spans, split)
        if not path.exists():
            raise FileNotFoundError(f"missing ECBD file: {path}")
        records = numbered_jsonl(path, FIELDS)
        probes, definitions = [], {}
        for line, record in records:
            probes.append(filled(record, f"{path}:{line}"))
            if not isinstance(record["definition"], list) or not all(isinstance(d, str) for d in record["definition"]):
                raise DataFormatError(f"{path}:{line}: definition must be a list of sentences, got "
                                      f"{record['definition']!r:.80}")
            for sentence in record["definition"]:
                probe = mention(sentence, record["entity_span_str"])
                definitions.setdefault(probe.text, probe)
        stages.append(Stage(name=year, train=list(definitions),
                            probes={"changed": [], "unchanged": [], "new": probes},
                            knowledge=list(definitions.values())))
    return Stream(stages)
