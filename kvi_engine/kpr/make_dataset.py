"""Deterministic generator of the KPR retrieval set (kvi_engine/data/kpr/).

Fictional people, organisations and places (names no encoder has seen) with facts. Each fact is one corpus
passage naming its subject by the canonical name; each query asks for the fact by the subject's *alias* (an epithet
such as "the Amber Falconer", or an acronym) in paraphrased wording. The generator asserts that a query shares no
content word with its gold passage and never contains the answer, so lexical matching cannot find it: the retriever
has to know that the alias and the name are one entity and what that entity is about. Subjects are split by
entity: training queries cover 70% of them, test queries only the held-out 30%; entities_train.jsonl lists what a
model may know at training time, entities.jsonl everything (the knowledge update adds the rest). A "name" control
subset asks held-out facts by the canonical name (word overlap allowed) to show KPR does not hurt the easy case.
Entity knowledge comes from contexts.jsonl, a separate profile corpus in other wording that omits 20% of facts.

    python -m kvi_engine.kpr.make_dataset [--out kvi_engine/data/kpr] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from kvi_engine.utils.atomic import atomic_open
from kvi_engine.utils.paths import kpr_data_dir

SYL = ["ve", "li", "na", "mor", "ka", "tel", "sa", "dri", "on", "bra", "ni", "ul", "fen", "ta", "zo", "re", "mi",
       "gar", "lo", "dru", "vin", "esh", "qua", "ris", "tor", "bel", "cy", "hal", "ost", "ury", "pel", "ad", "kes",
       "im", "var", "nol", "sef", "ith", "bo", "ja"]
ADJ = ["Amber", "Silent", "Crimson", "Iron", "Hollow", "Gilded", "Pale", "Wandering", "Velvet", "Ashen", "Copper",
       "Frost", "Laughing", "Quiet", "Scarlet", "Twilight", "Ivory", "Restless", "Emerald", "Midnight", "Brass",
       "Patient", "Salt", "Thorn", "Winter", "Golden", "Stormy", "Lonely", "Bright", "Sable"]
NOUN = ["Falconer", "Heron", "Lantern", "Ferryman", "Weaver", "Archer", "Warden", "Tinker", "Oracle", "Mason",
        "Piper", "Shepherd", "Raven", "Fox", "Bishop", "Harpist", "Wolf", "Owl", "Sparrow", "Ranger", "Hermit",
        "Pilgrim", "Jester", "Duchess", "Magpie", "Stag", "Badger", "Otter", "Lynx", "Crane"]
PROFESSIONS = ["cartographer", "glassblower", "botanist", "locksmith", "astronomer", "violinist", "surgeon",
               "architect", "sculptor", "chemist", "bookbinder", "geologist", "engraver", "novelist", "pharmacist",
               "clockmaker", "brewer", "translator", "veterinarian", "playwright"]
ORG_KINDS = ["Shipping Company", "Mining Consortium", "Printing House", "Savings Bank", "Observatory Trust",
             "Rail Syndicate", "Textile Guild", "Insurance Society", "Seed Cooperative", "Telegraph Bureau"]
PLACE_SUFFIX = ["ford", "holm", "wick", "mere", "stead", "burg", "vale", "haven", "port", "moor"]

PASSAGE = {
    "born_in": ["{s} was born in {o}.", "{o} is the town where {s} was born in {y}."],
    "works_for": ["{s} has worked for the {o} since {y}.", "In {y}, {s} joined the {o} as a junior clerk."],
    "profession": ["{s} earned a living as a {o}.", "By trade, {s} was a {o} for over twenty years."],
    "spouse": ["{s} married {o} in {y}.", "The wedding of {s} and {o} took place in {y}."],
    "headquartered_in": ["The {s} has its headquarters in {o}.", "Since {y}, the main offices of the {s} "
                         "have stood in {o}."],
    "founded_by": ["The {s} was founded by {o} in {y}.", "{o} set up the {s} in {y}."],
}
QUERY = {
    "born_in": ["What is the hometown of {a}?", "Which settlement does {a} originally come from?"],
    "works_for": ["Which organisation employs {a}?", "Who is the employer of {a}?"],
    "profession": ["What does {a} do for a job?", "What occupation does {a} have?"],
    "spouse": ["Who is the husband or wife of {a}?", "Whom did {a} wed?"],
    "headquartered_in": ["In which city is {a} based?", "Where does {a} operate from?"],
    "founded_by": ["Who established {a}?", "Who started {a}?"],
}
CONTEXT = {
    "born_in": "{m} spent childhood years in {o}.",
    "works_for": "{m} is on the payroll of the {o}.",
    "profession": "{m} is known as a skilled {o}.",
    "spouse": "{m} and {o} are a married couple.",
    "headquartered_in": "{m} operates out of {o}.",
    "founded_by": "{m} owes its existence to {o}.",
}
STOP = set("a an the of in on at to for by as is was were be has have had and or with from since over does do did "
           "what which who whom where when how this that its it into out".split())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP}


def _unique(rng: random.Random, make, seen: set[str]) -> str:
    while True:
        s = make()
        if s.lower() not in seen:
            seen.add(s.lower())
            return s


def generate(seed: int = 7, n_people: int = 600, n_orgs: int = 150, n_places: int = 100) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    word = lambda k: "".join(rng.choice(SYL) for _ in range(k)).capitalize()  # noqa: E731
    places = [_unique(rng, lambda: word(2) + rng.choice(PLACE_SUFFIX), seen) for _ in range(n_places)]
    epithets = [f"the {a} {n}" for a in ADJ for n in NOUN]
    rng.shuffle(epithets)
    people = [{"name": _unique(rng, lambda: f"{word(2)} {word(rng.choice((2, 3)))}", seen), "alias": epithets[i],
               "type": "person"} for i in range(n_people)]
    orgs = []
    while len(orgs) < n_orgs:
        stem, kind = word(rng.choice((2, 3))), rng.choice(ORG_KINDS)
        name = f"{stem} {kind}"
        acronym = (stem[0] + "".join(w[0] for w in kind.split()) + rng.choice("ABCDEFGHKLMNPRSTVXZ")).upper()
        if name.lower() in seen or acronym.lower() in seen:
            continue
        seen.update((name.lower(), acronym.lower()))
        orgs.append({"name": name, "alias": acronym, "type": "organisation"})

    facts = []  # (subject record, relation, object text)
    for p in people:
        facts.append((p, "born_in", rng.choice(places)))
        facts.append((p, "works_for", rng.choice(orgs)["name"]))
        facts.append((p, "profession", rng.choice(PROFESSIONS)))
    shuffled = people[:]
    rng.shuffle(shuffled)
    for a, b in zip(shuffled[0:len(people) // 3:2], shuffled[1:len(people) // 3:2]):
        facts.append((a, "spouse", b["name"]))
        facts.append((b, "spouse", a["name"]))
    for o in orgs:
        facts.append((o, "headquartered_in", rng.choice(places)))
        facts.append((o, "founded_by", rng.choice(people)["name"]))

    subjects = people + orgs
    order = list(range(len(subjects)))
    rng.shuffle(order)
    held_out = {subjects[i]["name"] for i in order[: int(0.3 * len(subjects))]}

    corpus, contexts, train, test = [], [], [], []
    by_relation: dict[str, list[str]] = {}
    for k, (subj, rel, obj) in enumerate(facts):
        pid = f"p{k:05d}"
        year = str(rng.randint(1820, 1990))
        text = rng.choice(PASSAGE[rel]).format(s=subj["name"], o=obj, y=year)
        corpus.append({"id": pid, "text": text, "subject": subj["name"], "relation": rel})
        by_relation.setdefault(rel, []).append(pid)
        if rng.random() < 0.8:
            mention = subj["name"] if rng.random() < 0.5 else subj["alias"]
            ctx = CONTEXT[rel].format(m=mention, o=obj)
            contexts.append({"text": ctx[0].upper() + ctx[1:]})
        query = rng.choice(QUERY[rel]).format(a=subj["alias"])
        overlap = _words(query) & _words(text)
        if overlap or obj.lower() in query.lower():
            raise AssertionError(f"query {query!r} overlaps its passage {text!r} in {sorted(overlap)}")
        if subj["name"] in held_out:
            test.append({"query": query, "positives": [pid], "subset": "alias", "relation": rel})
            named = rng.choice(QUERY[rel]).format(a=("the " if subj["type"] == "organisation" else "") + subj["name"])
            test.append({"query": named, "positives": [pid], "subset": "name", "relation": rel})
        else:
            train.append({"query": query, "positive": pid, "relation": rel})
    corpus_rel = {c["id"]: c["relation"] for c in corpus}
    corpus_subj = {c["id"]: c["subject"] for c in corpus}
    for t in train:
        same_rel = [p for p in rng.sample(by_relation[t["relation"]], 4) if corpus_subj[p] != corpus_subj[t["positive"]]]
        t["negatives"] = same_rel[:3]
        del t["relation"]
    rng.shuffle(contexts)
    rng.shuffle(train)
    entity = lambda r: {"name": r["name"], "type": r["type"], "aliases": [r["alias"]]}  # noqa: E731
    place_entities = [{"name": p, "type": "town"} for p in places]
    entities = [entity(r) for r in subjects] + place_entities
    entities_train = [entity(r) for r in subjects if r["name"] not in held_out] + place_entities
    assert all(corpus_rel[t["positive"]] for t in train)
    return {"entities": entities, "entities_train": entities_train, "contexts": contexts, "corpus": corpus,
            "train": train, "test": test}


def write(out: str | Path, data: dict[str, list[dict]]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        with atomic_open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(kpr_data_dir()))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    data = generate(args.seed)
    write(args.out, data)
    print(" ".join(f"{k}={len(v)}" for k, v in data.items()), "->", args.out)


if __name__ == "__main__":
    main()
