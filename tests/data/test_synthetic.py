"""The synthetic temporal world: deterministic, with disjoint probe sets and correct spans."""

from __future__ import annotations

import dataclasses

import pytest

from lifelong.config import SyntheticDataConfig
from lifelong.data.synthetic import RELATIONS, generate_stream

TINY = SyntheticDataConfig(num_stages=3, num_entities=16, new_entities_per_stage=4, probes_per_set=500)


def test_same_seed_same_stream_other_seed_other_stream():
    assert generate_stream(TINY) == generate_stream(TINY)
    assert generate_stream(dataclasses.replace(TINY, seed=1)) != generate_stream(TINY)


def test_stage_structure_and_counts():
    stream = generate_stream(TINY)
    assert [s.name for s in stream.stages] == ["stage_0", "stage_1", "stage_2"]
    first, update = stream.stages[0], stream.stages[1]
    facts_first = TINY.num_entities * len(RELATIONS)
    assert first.probes["changed"] == [] and first.probes["unchanged"] == []
    assert len(first.probes["new"]) == facts_first
    assert len(first.knowledge) == facts_first * TINY.train_renderings
    assert len(update.probes["new"]) == TINY.new_entities_per_stage * len(RELATIONS)
    assert len(update.probes["changed"]) == round(TINY.change_fraction * facts_first)
    assert len(update.probes["changed"]) + len(update.probes["unchanged"]) == facts_first


def _subject_relation(probe_text: str) -> tuple[str, str]:
    for relation, (_, templates) in RELATIONS.items():
        for template in templates:
            prefix, suffix = template.split("{s}")
            middle = suffix.split("{o}")[0]
            if probe_text.startswith(prefix) and middle in probe_text:
                subject = probe_text[len(prefix) : probe_text.index(middle, len(prefix))]
                if subject.count(" ") == 1:
                    return subject, relation
    raise AssertionError(f"no template matches {probe_text!r}")


@pytest.mark.parametrize("probe_template", ["trained", "heldout"])
def test_probe_sets_are_disjoint_and_spans_are_objects(probe_template):
    stream = generate_stream(dataclasses.replace(TINY, probe_template=probe_template))
    for stage in stream.stages:
        facts = {name: {_subject_relation(p.text) for p in probes} for name, probes in stage.probes.items()}
        assert not facts["changed"] & facts["unchanged"]
        assert not facts["changed"] & facts["new"]
        assert not facts["unchanged"] & facts["new"]
        for probes in stage.probes.values():
            for probe in probes:
                start, end = probe.span
                assert probe.text[end:] == "." and probe.text[start - 1] == " "
        train = set(stage.train)
        for probe in stage.probes["changed"] + stage.probes["new"]:
            assert (probe.text in train) == (probe_template == "trained")


def test_changed_facts_get_a_new_object():
    stream = generate_stream(TINY)
    stated = {}
    for stage in stream.stages:
        for name in ("changed", "unchanged", "new"):
            for probe in stage.probes[name]:
                key = _subject_relation(probe.text)
                obj = probe.text[slice(*probe.span)]
                if name == "changed":
                    assert stated[key] != obj
                if name == "unchanged":
                    assert stated[key] == obj
                stated[key] = obj
