"""The synthetic temporal world: deterministic, with disjoint probe sets and correct spans."""

from __future__ import annotations

import dataclasses
import random

import pytest

from lifelong.config import SyntheticDataConfig
from lifelong.data.synthetic import RELATIONS, generate_stream, world_timeline

TINY = SyntheticDataConfig(num_stages=3, num_entities=16, new_entities_per_stage=4, probes_per_set=500)


def test_same_seed_same_stream_other_seed_other_stream():
    assert generate_stream(TINY) == generate_stream(TINY)
    assert generate_stream(dataclasses.replace(TINY, seed=1)) != generate_stream(TINY)


def test_stage_structure_and_counts():
    stream = generate_stream(TINY)
    updates = world_timeline(TINY, random.Random(TINY.seed))
    assert [s.name for s in stream.stages] == ["stage_0", "stage_1", "stage_2"]
    first, last = stream.stages[0], stream.stages[-1]
    facts_first = TINY.num_entities * len(RELATIONS)
    assert first.probes["changed"] == [] and first.probes["unchanged"] == []
    assert len(first.knowledge) == facts_first * TINY.train_renderings
    changed_later = set(updates[1].changed) | set(updates[2].changed)
    assert len(first.probes["new"]) == facts_first - len(changed_later & set(updates[0].world))
    # nothing changes after the last stage: every fact is probed there
    assert len(last.probes["new"]) == TINY.new_entities_per_stage * len(RELATIONS)
    existing = facts_first + TINY.new_entities_per_stage * len(RELATIONS)  # stage 0's and stage 1's facts
    assert len(last.probes["changed"]) == round(TINY.change_fraction * existing)
    assert len(last.probes["changed"]) + len(last.probes["unchanged"]) == existing


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
            if probe_template == "heldout":  # not even as a part: the context up to the object is new text
                assert not any(sentence in probe.text for other in stream.stages for sentence in other.train)


def test_changed_facts_get_a_new_object_and_every_probe_holds_to_the_end():
    """A probe's object is its fact's object at its stage (a changed one differs from the stage
    before) and at the end of the stream: no later update makes it out of date."""
    stream = generate_stream(TINY)
    updates = world_timeline(TINY, random.Random(TINY.seed))
    for index, stage in enumerate(stream.stages):
        for name, probes in stage.probes.items():
            for probe in probes:
                fact = _subject_relation(probe.text)
                obj = probe.text[slice(*probe.span)]
                assert obj == updates[index].world[fact] == updates[-1].world[fact]
                if name == "changed":
                    assert updates[index - 1].world[fact] != obj
                if name == "unchanged":
                    assert updates[index - 1].world[fact] == obj


def test_knowledge_spans_are_changed_objects_and_new_entities_mentions():
    """DESIGN.md section 5: TGL's temporal loss covers a changed fact's new object and a new entity's name."""
    stream = generate_stream(TINY)
    update = world_timeline(TINY, random.Random(TINY.seed))[1]
    changed, new = set(update.changed), {entity for entity, _ in update.new}
    spans = {"object": 0, "mention": 0}
    for probe in stream.stages[1].knowledge:
        span = probe.text[slice(*probe.span)]
        entity, relation = _subject_relation(probe.text)
        if (entity, relation) in changed:
            assert span == update.world[entity, relation]
            spans["object"] += 1
        else:
            assert entity in new and span == entity
            spans["mention"] += 1
    assert spans["object"] == len(changed) * TINY.train_renderings
    assert spans["mention"] == len(update.new) * TINY.train_renderings
