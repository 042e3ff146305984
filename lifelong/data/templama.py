"""TempLAMA (Dhingra et al. 2022) and Dynamic TempLAMA from their jsonl files on disk.

Each line (google-research/language templama/README.md; amazon-science/temporal-robustness for
Dynamic TempLAMA): `query` (with `_X_` for the object), `answer` (a list of {wikidata_id, name};
a single dict, as templama.py writes it, is accepted), `date` (a year, or a quarter such as
`2019-Q1` in Dynamic TempLAMA), `id` (`<QID>_<PID>_<date>`), `relation`; TempLAMA also has
`most_frequent_answer` and `most_recent_answer`, which Dynamic TempLAMA lacks and this loader
does not need.

One stage per date. A fact is (subject QID, relation PID); at each date it is `new` when first
seen, `changed` when its answer set differs from its previous date's, else `unchanged`. A
stage's training text states its facts (the query with the first answer filled in); probes
score the answer span, and carry all of the fact's answers: exact match and top-k take the best
over them, as in TempLAMA. Changed and new facts are the temporal side of TGL's tracing.

Some relations' queries put the object first (P286, P488, P6: "_X_ is the head coach of ...").
A left-to-right LM has no prefix to complete there, so exact match and top-k leave those probes
out (lifelong/eval/accuracy.py); their span perplexity is scored as any other's. Loading warns
with their count.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lifelong.data.jsonl import DataFormatError, numbered_jsonl
from lifelong.data.stream import Probe, Stage, Stream

FIELDS = ("query", "answer", "date", "id", "relation")


def answers(record: dict, where: str) -> list[str]:
    answer = record["answer"]
    answer = [answer] if isinstance(answer, dict) else answer
    if not answer or not all(isinstance(a, dict) and "name" in a for a in answer):
        raise DataFormatError(f"{where}: `answer` must be a list of {{wikidata_id, name}}")
    return [a["name"] for a in answer]


def fill(query: str, names: list[str], where: str) -> Probe:
    """The query with the first answer in place of _X_; the probe lists all of them."""
    if "_X_" not in query:
        raise DataFormatError(f"{where}: query has no _X_ placeholder: {query!r}")
    start = query.index("_X_")
    text = query.replace("_X_", names[0], 1)
    return Probe(text, (start, start + len(names[0])), tuple(names))


def load_templama(files: list[Path], accuracy_top_k: int | None = 5) -> Stream:
    by_date: dict[str, list[tuple[tuple[str, str], Probe]]] = {}
    first_relations: list[str] = []  # the relation of every object-first query
    for path in files:
        if not path.exists():
            raise FileNotFoundError(f"data.files: missing TempLAMA file: {path}")
        for line, record in numbered_jsonl(path, FIELDS):
            where = f"{path}:{line}"
            names = answers(record, where)
            parts = str(record["id"]).split("_")
            key = (parts[0], str(record["relation"]))
            probe = fill(record["query"], names, where)
            by_date.setdefault(str(record["date"]), []).append((key, probe))
            if not probe.prompt.strip():  # the object comes first
                first_relations.append(key[1])
    if first_relations:
        total = sum(map(len, by_date.values()))
        warnings.warn(f"TempLAMA: {len(first_relations)} of {total} queries put the object first (relations "
                      f"{', '.join(sorted(set(first_relations)))}): exact match and top-k leave them out, "
                      "having no prefix to complete; their perplexity is scored", stacklevel=2)
    last: dict[tuple[str, str], frozenset[str]] = {}
    stages = []
    for date in sorted(by_date):
        probes: dict[str, list[Probe]] = {"changed": [], "unchanged": [], "new": []}
        for key, probe in by_date[date]:
            names = frozenset(probe.answers)
            kind = "new" if key not in last else "changed" if last[key] != names else "unchanged"
            probes[kind].append(probe)
            last[key] = names
        stages.append(Stage(name=date, train=[p.text for _, p in by_date[date]], probes=probes,
                            knowledge=probes["changed"] + probes["new"]))
    return Stream(stages, accuracy_top_k)
