"""The synthetic temporal world: the offline default stream.

Entities have one object per relation. Stage 0 is the first snapshot of the world; at every
later stage a share of the existing facts change object and new entities appear. A stage's
corpus states its new and changed facts in several paraphrases (plus a few unchanged facts,
as Wikipedia diffs do). Probes state a fact in a template held out of training (`probe_template:
heldout`, the default: knowledge, not a memorized sentence, as DESIGN.md asks), or as it was last
stated (`trained`, one of its training paraphrases: recall of the text itself). A stage probes
only facts that keep their object to the end of the stream, so the stage x stage matrices
score retention, not updates learned later. The object is
always last, so a causal LM's probe span (the object's tokens) is predicted from the subject
and relation. Deterministic for `seed`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lifelong.config import SyntheticDataConfig
from lifelong.data.stream import Probe, Stage, Stream

# relation -> (object kind, templates); the last template is held out of training, and no
# trained template is part of it (the probe's context up to the object is never a training text)
RELATIONS: dict[str, tuple[str, list[str]]] = {
    "lives_in": (
        "city",
        ["{s} lives in {o}.", "{s} has a home in {o}.", "{s} resides in the city of {o}.",
         "The home town of {s} is {o}.", "The city where {s} lives is {o}."],
    ),
    "works_for": (
        "company",
        ["{s} works for {o}.", "{s} is employed by {o}.", "The employer of {s} is {o}.",
         "{s} has a job at {o}.", "The company {s} works at is {o}."],
    ),
    "plays_for": (
        "team",
        ["{s} plays for {o}.", "{s} is a player of {o}.", "The team of {s} is {o}.",
         "{s} competes for {o}.", "The club {s} turns out for is {o}."],
    ),
    "member_of": (
        "party",
        ["{s} is a member of {o}.", "{s} belongs to {o}.", "The party of {s} is {o}.",
         "{s} has joined {o}.", "The political party {s} supports is {o}."],
    ),
}
OBJECT_SUFFIX = {"city": "", "company": " Corp", "team": " United", "party": " Party"}
SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "to", "shi", "dar", "nel", "qu", "bri", "zo", "fa",
             "gel", "hu", "pin", "sa", "tor", "vi", "wen", "yu", "xe", "mor", "lin"]


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def _unique_names(rng: random.Random, count: int, make) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = make()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _render(template: str, subject: str, obj: str) -> Probe:
    text = template.format(s=subject, o=obj)
    start = text.rindex(obj)
    return Probe(text, (start, start + len(obj)))


Fact = tuple[str, str]  # (entity, relation)


@dataclass
class Update:
    """What a stage does to the world: facts whose object changes, new entities' facts, and the
    world (fact -> object) after it."""

    changed: list[Fact]
    unchanged: list[Fact]
    new: list[Fact]
    world: dict[Fact, str]


def world_timeline(cfg: SyntheticDataConfig, rng: random.Random) -> list[Update]:
    total_entities = cfg.num_entities + cfg.new_entities_per_stage * (cfg.num_stages - 1)
    entities = _unique_names(rng, total_entities, lambda: f"{_name(rng, 2)} {_name(rng, 2)}")
    objects = {
        kind: [n + suffix for n in _unique_names(rng, 12, lambda: _name(rng, 3))]
        for kind, suffix in OBJECT_SUFFIX.items()
    }
    world: dict[Fact, str] = {}
    updates = []
    for index in range(cfg.num_stages):
        if index == 0:
            new_entities = entities[: cfg.num_entities]
            existing: list[Fact] = []
        else:
            first = cfg.num_entities + (index - 1) * cfg.new_entities_per_stage
            new_entities = entities[first : first + cfg.new_entities_per_stage]
            existing = sorted(world)
        changed = rng.sample(existing, round(cfg.change_fraction * len(existing)))
        for fact in changed:
            kind = RELATIONS[fact[1]][0]
            world[fact] = rng.choice([o for o in objects[kind] if o != world[fact]])
        new = [(e, r) for e in new_entities for r in RELATIONS]
        for fact in new:
            world[fact] = rng.choice(objects[RELATIONS[fact[1]][0]])
        changed_set = set(changed)
        updates.append(Update(changed, [f for f in existing if f not in changed_set], new, dict(world)))
    return updates


def _state(fact: Fact, template: str, world: dict[Fact, str]) -> Probe:
    return _render(template, fact[0], world[fact])


def _mention(probe: Probe, entity: str) -> Probe:
    """The same sentence, its span on the entity's mention."""
    start = probe.text.index(entity)
    return Probe(probe.text, (start, start + len(entity)))


def generate_stream(cfg: SyntheticDataConfig) -> Stream:
    rng = random.Random(cfg.seed)
    updates = world_timeline(cfg, rng)
    last_stated: dict[Fact, Probe] = {}  # a training sentence of the fact's current object
    stages: list[Stage] = []
    for index, update in enumerate(updates):
        knowledge = []
        changed_set = set(update.changed)
        for fact in update.changed + update.new:
            templates = rng.sample(RELATIONS[fact[1]][1][:-1], cfg.train_renderings)
            renderings = [_state(fact, t, update.world) for t in templates]
            last_stated[fact] = renderings[0]
            # TGL's knowledge spans (DESIGN.md section 5): a changed fact's new object, a new entity's mention
            knowledge += renderings if fact in changed_set else [_mention(p, fact[0]) for p in renderings]
        restated = rng.sample(update.unchanged, round(cfg.unchanged_in_train * len(update.unchanged)))
        train = [p.text for p in knowledge]
        train += [_state(f, rng.choice(RELATIONS[f[1]][1][:-1]), update.world).text for f in restated]
        rng.shuffle(train)
        # a fact that changes again later is not probed: after that change its higher perplexity
        # on this stage's probe would be a learned update, scored as forgetting
        later = set().union(*(u.changed for u in updates[index + 1 :]))
        probes = {}
        for name, facts in (("changed", update.changed), ("unchanged", update.unchanged), ("new", update.new)):
            stable = [f for f in facts if f not in later]
            chosen = rng.sample(stable, min(cfg.probes_per_set, len(stable)))
            probes[name] = ([_state(f, RELATIONS[f[1]][1][-1], update.world) for f in chosen]
                            if cfg.probe_template == "heldout" else [last_stated[f] for f in chosen])
        stages.append(Stage(name=f"stage_{index}", train=train, probes=probes, knowledge=knowledge))
    return Stream(stages)
