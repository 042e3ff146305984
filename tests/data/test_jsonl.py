"""The local jsonl stream format."""

from __future__ import annotations

import json
import shutil

import pytest

from lifelong.config import ConfigError
from lifelong.data.corpus import load_corpus
from lifelong.data.jsonl import DataFormatError, load_stream, stage_dirs
from lifelong.launch.checks import validate_command_line
from tests.conftest import FIXTURES


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_loads_stages_in_order_with_probes(tmp_path):
    write(tmp_path / "2019" / "train.jsonl", [{"text": "Ana lives in Rome."}])
    write(tmp_path / "2020" / "train.jsonl", [{"text": "Ana lives in Oslo."}, {"text": "Bo was born."}])
    write(tmp_path / "2020" / "probes_changed.jsonl", [{"text": "Ana lives in Oslo.", "target": "Oslo"}])
    write(tmp_path / "2020" / "probes_new.jsonl", [{"text": "Bo was born."}])
    stream = load_stream(tmp_path, cache_dir=str(tmp_path / "cache"))
    assert [s.name for s in stream.stages] == ["2019", "2020"]
    second = stream.stages[1]
    assert load_corpus(second.train)["text"] == ["Ana lives in Oslo.", "Bo was born."]
    assert second.probes["unchanged"] == []
    changed = second.probes["changed"][0]
    assert changed.text[slice(*changed.span)] == "Oslo"
    assert second.probes["new"][0].span == (0, len("Bo was born."))


def test_stages_are_read_in_natural_name_order(tmp_path):
    names = ["s10", "s2", "s1", "2019-11", "2019-05", "s02"]
    for name in names:
        (tmp_path / name).mkdir()
    assert [p.name for p in stage_dirs(tmp_path)] == ["2019-05", "2019-11", "s1", "s02", "s2", "s10"]


def test_malformed_probe_line_names_file_and_line(tmp_path):
    write(tmp_path / "s0" / "train.jsonl", [{"text": "fine"}])
    path = tmp_path / "s0" / "probes_new.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataFormatError, match=rf"{path}:2: not valid JSON"):
        load_stream(tmp_path)


def test_missing_field_and_missing_paths(tmp_path):
    write(tmp_path / "s0" / "train.jsonl", [{"text": "ok"}])
    write(tmp_path / "s0" / "probes_changed.jsonl", [{"body": "no text"}])
    with pytest.raises(DataFormatError, match=r"probes_changed.jsonl:1: missing field\(s\) \['text'\]"):
        load_stream(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        load_stream(tmp_path / "absent")
    (tmp_path / "s1").mkdir()
    (tmp_path / "s0" / "probes_changed.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "s1" / "train.jsonl")):
        load_stream(tmp_path)


@pytest.mark.parametrize("record", [{"text": "Ana lives in Rome.", "target": "Oslo"}, {"text": None},
                                    {"text": "Bo works for Acme.", "target": ""}])
def test_a_bad_probe_names_its_file_and_line(tmp_path, record):
    write(tmp_path / "s0" / "train.jsonl", [{"text": "ok"}])
    path = tmp_path / "s0" / "probes_new.jsonl"
    write(path, [{"text": "fine"}, record])
    with pytest.raises(DataFormatError, match=rf"{path}:2: (target 'Oslo' does not occur|`text` .* must be strings|"
                                              "target '' is empty)"):
        load_stream(tmp_path)


def test_tgls_knowledge_and_the_probe_sets_are_checked_before_launch(tmp_path):
    """TGL traces each stage's knowledge.jsonl from tgl.from_stage on (the fixture has it in its
    second stage only), and a probe file of another set than the three would be left out unseen."""
    stream = tmp_path / "stream"
    shutil.copytree(FIXTURES / "jsonl", stream)
    base = ["data=jsonl", f"data.path={stream}"]
    assert validate_command_line([*base, "tgl=freeze"]) == 1
    with pytest.raises(ConfigError, match=r"knowledge.jsonl in every stage TGL traces .*2019 has none"):
        validate_command_line([*base, "tgl=freeze", "tgl.from_stage=0"])
    write(stream / "2021" / "train.jsonl", [{"text": "Ana lives in Rome."}])  # a third stage, no knowledge
    with pytest.raises(ConfigError, match=r"knowledge.jsonl in every stage TGL traces .*2021 has none"):
        validate_command_line([*base, "tgl=adaptive_lr"])
    assert validate_command_line([*base, "tgl=adaptive_lr", "tgl.trace=once"]) == 1  # stage 1's trace only
    write(stream / "2020" / "probes_custom.jsonl", [{"text": "Ana lives in Oslo."}])
    with pytest.raises(ConfigError, match=r"probes_\{changed,unchanged,new\}.jsonl: .*2020/probes_custom.jsonl"):
        validate_command_line(base)
    with pytest.raises(DataFormatError, match="probes_custom.jsonl is not one of them"):
        load_stream(stream)
