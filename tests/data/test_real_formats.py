"""Loaders of the real temporal datasets on fixtures written in their published formats."""

from __future__ import annotations

import json
import shutil

import pytest

from lifelong.config import ConfigError, compose_train_config
from lifelong.data.corpus import load_corpus
from lifelong.data.ecbd import load_ecbd
from lifelong.data.jsonl import DataFormatError
from lifelong.data.templama import load_templama
from lifelong.data.temporalwiki import load_temporalwiki
from tests.conftest import FIXTURES


def test_temporalwiki_stages_probes_and_spans(tmp_path):
    stream = load_temporalwiki(FIXTURES / "temporalwiki", ["0809", "0910"], "sentence", str(tmp_path))
    assert [s.name for s in stream.stages] == ["0809", "0910"]
    first, second = stream.stages
    first_text, second_text = load_corpus(first.train)["text"], load_corpus(second.train)["text"]
    assert len(first_text) == 2 and len(second_text) == 3
    assert '"PSG"' in second_text[1]  # CSV quoting read back
    assert [len(first.probes[n]) for n in ("changed", "unchanged", "new")] == [2, 3, 0]
    assert first.probes["changed"][0].text == "Lionel Messi member of sports team Paris Saint-Germain F.C."
    assert first.probes["changed"][0].span == (0, len(first.probes["changed"][0].text))
    knowledge = first.knowledge[0]
    assert knowledge.text[slice(*knowledge.span)] == "Paris Saint-Germain F.C."
    objects = load_temporalwiki(FIXTURES / "temporalwiki", ["0809"], "object").stages[0].probes["unchanged"]
    assert [p.text[slice(*p.span)] for p in objects] == ["France", "Germany", "Italy"]


def test_temporalwiki_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="wikipedia_1011_gpt2.csv|1001-1101_changed.csv"):
        load_temporalwiki(FIXTURES / "temporalwiki", ["1011"], "sentence")
    root = tmp_path / "tw"
    shutil.copytree(FIXTURES / "temporalwiki", root)
    bad = root / "twiki_probes" / "0801-0901_unchanged.csv"
    bad.write_text("subject,relation,object\nParis,capital of,France\nBerlin,capital of\n")
    with pytest.raises(DataFormatError, match=rf"{bad}:3: row has fewer fields"):
        load_temporalwiki(root, ["0809"], "sentence")
    # an unquoted comma splits the object: an error, not "Paris Saint-Germain" silently
    bad.write_text("subject,relation,object\nLionel Messi,member of sports team,Paris Saint-Germain, F.C.\n")
    with pytest.raises(DataFormatError, match=rf"{bad}:2: row has more fields than the header \(extra: \[' F.C.'\]"):
        load_temporalwiki(root, ["0809"], "sentence")
    bad.write_text("subject,relation,object\nParis,capital of,France\nLionel Messi,member of sports team, \n")
    with pytest.raises(DataFormatError, match=rf"{bad}:3: empty object"):  # a span of no token, found at evaluation
        load_temporalwiki(root, ["0809"], "sentence")


def test_templama_years_and_change_kinds():
    stream = load_templama([FIXTURES / "templama" / "test.json"])
    assert [s.name for s in stream.stages] == ["2020", "2021"]
    first, second = stream.stages
    assert [len(first.probes[n]) for n in ("changed", "unchanged", "new")] == [0, 0, 2]
    assert [len(second.probes[n]) for n in ("changed", "unchanged", "new")] == [1, 1, 1]
    changed = second.probes["changed"][0]
    assert changed.text == "Lionel Messi plays for Paris Saint-Germain."
    assert changed.text[slice(*changed.span)] == "Paris Saint-Germain"
    assert second.probes["unchanged"][0].text[slice(*second.probes["unchanged"][0].span)] == "Chancellor of Germany"
    assert len(second.knowledge) == 2  # changed + new


def test_templama_probes_carry_all_answers_and_object_first_queries_warn(tmp_path):
    path = tmp_path / "t.json"
    coach = {"query": "_X_ is the head coach of Arsenal F.C..", "date": "2010", "id": "Q9617_P286_2010",
             "relation": "P286", "answer": [{"wikidata_id": "Q1", "name": "Arsene Wenger"}]}
    teams = {"query": "Lionel Messi plays for _X_.", "date": "2010", "id": "Q615_P54_2010", "relation": "P54",
             "answer": [{"wikidata_id": "Q7156", "name": "FC Barcelona"},
                        {"wikidata_id": "Q10467", "name": "Argentina national football team"}]}
    path.write_text(f"{json.dumps(coach)}\n{json.dumps(teams)}\n")
    with pytest.warns(UserWarning, match=r"1 of 2 queries put the object first \(relations P286\)"):
        stream = load_templama([path])
    first, fact = stream.stages[0].probes["new"]
    assert (first.text, first.span) == ("Arsene Wenger is the head coach of Arsenal F.C..", (0, len("Arsene Wenger")))
    assert fact.text[slice(*fact.span)] == "FC Barcelona"  # the text states the first answer
    assert fact.answers == ("FC Barcelona", "Argentina national football team")


def test_templama_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "t.json"
    lines = (FIXTURES / "templama" / "test.json").read_text().splitlines()
    record = json.loads(lines[1])
    record["query"] = "no placeholder"
    path.write_text("\n".join([lines[0], "", json.dumps(record)]) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:3: query has no _X_"):  # blank lines still count
        load_templama([path])
    path.write_text(lines[0] + "\n{broken\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: not valid JSON"):
        load_templama([path])


def test_ecbd_years_new_entity_span_probes_and_definitions():
    stream = load_ecbd(FIXTURES / "ecbd", ["2019", "2020"], "np", "test")
    first, second = stream.stages
    assert [len(s.probes["new"]) for s in stream.stages] == [2, 1]
    assert first.probes["changed"] == [] and first.probes["unchanged"] == []
    probe = first.probes["new"][0]
    assert probe.text == "The Mars 2020 rover landed in Jezero crater."
    assert probe.text[slice(*probe.span)] == "landed"
    # the gold span comes from answer_d, not the T5-formatted answer_str
    assert second.probes["new"][0].text == "COVID-19 vaccines were developed by several companies."
    # definitions cleaned as ECBD cleans them: entity markers and "(')" dropped, whitespace collapsed
    assert first.train == ["Mars 2020 is a Mars rover mission by NASA.", "The mission launched in July 2020."]
    assert second.train == ["COVID-19 is a contagious disease caused by SARS-CoV-2."]
    assert first.knowledge[0].text[slice(*first.knowledge[0].span)] == "Mars 2020"
    assert second.knowledge[0].text[slice(*second.knowledge[0].span)] == "COVID-19"
    with pytest.raises(FileNotFoundError, match="2021/np_spans_test.json"):
        load_ecbd(FIXTURES / "ecbd", ["2021"], "np", "test")


def test_ecbd_bad_gold_span_names_file_and_line(tmp_path):
    lines = (FIXTURES / "ecbd" / "2020" / "np_spans_test.json").read_text().splitlines()
    record = json.loads(lines[0])
    record["answer_d"] = {"<extra_id_1>": "several companies"}
    (tmp_path / "2020").mkdir()
    path = tmp_path / "2020" / "np_spans_test.json"
    path.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: answer_d must map <extra_id_0>"):
        load_ecbd(tmp_path, ["2020"], "np", "test")
    record["answer_d"] = {"<extra_id_0>": ""}
    path.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: answer_d must map <extra_id_0>"):
        load_ecbd(tmp_path, ["2020"], "np", "test")
    # a string is not a list of sentences: iterated, it became one "definition" per character
    record = {**json.loads(lines[0]), "definition": "[ENT_START]Mars 2020[ENT_END] is a rover."}
    path.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: definition must be a list of sentences"):
        load_ecbd(tmp_path, ["2020"], "np", "test")


@pytest.mark.parametrize(
    "overrides",
    # TemporalWiki scores whole sentences, over 32 tokens at this vocabulary: a probe must fit in seq_len
    [["data=temporalwiki", f"data.root={FIXTURES / 'temporalwiki'}", "data.stages=[0809,0910]", "data.seq_len=64"],
     ["data=templama", f"data.files=[{FIXTURES / 'templama' / 'test.json'}]"],
     ["data=ecbd", f"data.root={FIXTURES / 'ecbd'}", "data.years=[2019,2020]"],
     ["data=jsonl", f"data.path={FIXTURES / 'jsonl'}"]],
    ids=["temporalwiki", "templama", "ecbd", "jsonl"],
)
def test_each_dataset_trains_end_to_end(tmp_path, overrides):
    from lifelong.train import train

    cfg = compose_train_config(["experiment=smoke", "data.seq_len=32", "data.vocab_size=300",
                                "trainer.steps_per_stage=2", *overrides], run_dir=str(tmp_path))
    results = train(cfg)
    assert len(results["stages"]) == 2
    if "data=templama" in overrides:  # TempLAMA's protocol adds span accuracy matrices
        exact, top_k = results["accuracy"]["new/exact_match"], results["accuracy"]["changed/top_k"]
        assert all(0 <= exact[t][j] <= 1 for t in range(2) for j in range(2))
        assert top_k[1][0] is None and 0 <= top_k[1][1] <= 1  # the first year changes nothing
    else:
        assert "accuracy" not in results


def test_a_from_stage_past_templamas_dates_is_an_error_before_training(tmp_path):
    """TempLAMA's stages are its distinct dates, known only once loaded: train checks there."""
    from lifelong.train import train

    files = f"data.files=[{FIXTURES / 'templama' / 'test.json'}]"
    cfg = compose_train_config(["experiment=smoke", "data=templama", files, "method=lora", "method.from_stage=2"],
                               run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"method\.from_stage=2.*the stream has 2 stages"):
        train(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()
    empty = tmp_path / "empty.json"
    empty.write_text("")
    cfg = compose_train_config(["experiment=smoke", "data=templama", f"data.files=[{empty}]"],
                               run_dir=str(tmp_path / "e"))
    with pytest.raises(ConfigError, match=r"data=0: allowed is a stream of at least one stage"):
        train(cfg)  # a file of no query: no stage, refused before the run dir is claimed
    assert not (tmp_path / "e" / "config.yaml").exists()
