"""Relations of the synthetic fact-reading world: statement templates, question phrasings, noun phrases for chaining.

Every relation of the sample corpus (kvi_engine/data/sample) plus 26 more. Templates of the sample relations are the
ones of kvi_engine.statements.DEFAULT_TEMPLATES; the new ones are listed in NEW_TEMPLATES (to be added there, or
shipped as the reader's templates file).

Per relation:
  subj / obj      entity types allowed as subject / object
  fwd             questions asking the object, {x} = the subject (a name or, in 2-hop questions, a noun phrase)
  inv             questions asking the subject, {x} = the object ([] = not askable: the object is not identifying)
  fwd_np          noun phrase for the object given the subject ("the founder of {x}"), None = cannot be chained
  inv_np          noun phrase for the subject given the object ("the company that produces {x}")
  {otype}/{stype} in a phrasing is replaced by the type word of the object / subject.
  sym             symmetric relation (married_to, borders): a question about either side asks the other.
  same            relation that states the same fact the other way round (treats <-> treated_by).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rel:
    name: str
    subj: tuple
    obj: tuple
    template: str
    fwd: tuple
    inv: tuple = ()
    fwd_np: str | None = None
    inv_np: str | None = None
    sym: bool = False
    same: str | None = None
    weight: float = 1.0
    inv_func: bool = False  # one subject per object as well (a country has one capital)


# Entity types: type word used in questions ("Which {otype} ...") and in anchors ("X is a {type}.").
TYPE_WORD = {
    "person": "person", "city": "city", "country": "country", "company": "company", "organization": "organization",
    "university": "university", "institute": "institute", "virus": "virus", "disease": "disease", "drug": "drug",
    "product": "product", "vector": "animal", "agency": "agency", "year": "year", "language": "language",
    "river": "river", "team": "team", "book": "book", "film": "film", "currency": "currency",
    "building": "building", "event": "event", "symptom": "symptom", "publisher": "publisher",
}

SAMPLE_RELATIONS = ("approved_by", "born_in", "capital_of", "causes", "discovered_by", "founded_by", "founded_in",
                    "headquartered_in", "leads", "located_in", "member_of", "part_of", "produces", "transmitted_by",
                    "treated_by", "treats", "uses", "works_for")

R = [
    # ---- the sample corpus' relations (templates as in statements.DEFAULT_TEMPLATES) ----
    Rel("capital_of", ("city",), ("country",), "{subject} is the capital of {object}.",
        ("Which country is {x} the capital of?", "{x} is the capital of which country?",
         "Of which country is {x} the capital?"),
        ("What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital of {x}."),
        "the country whose capital is {x}", "the capital of {x}", inv_func=True),
    Rel("located_in", ("city", "building", "institute", "university"), ("country", "city"),
        "{subject} is located in {object}.",
        ("Where is {x} located?", "In which {otype} is {x} located?", "Where can {x} be found?"),
        ("Which {stype} is located in {x}?",),
        "the {otype} where {x} is located", "the {stype} located in {x}"),
    Rel("founded_by", ("company", "organization", "institute"), ("person",), "{subject} was founded by {object}.",
        ("Who founded {x}?", "Who is the founder of {x}?", "{x} was founded by whom?", "Who started {x}?"),
        ("Which {stype} was founded by {x}?", "What did {x} found?"),
        "the founder of {x}", "the {stype} founded by {x}", weight=1.5),
    Rel("founded_in", ("company", "organization", "institute", "university"), ("year",),
        "{subject} was founded in {object}.",
        ("In which year was {x} founded?", "When was {x} founded?", "What year was {x} founded in?",
         "In what year was {x} established?"), (), None, None),
    Rel("born_in", ("person",), ("city",), "{subject} was born in {object}.",
        ("Where was {x} born?", "In which city was {x} born?", "What is the birthplace of {x}?",
         "Where is {x} from?"),
        ("Who was born in {x}?",), "the birthplace of {x}", "the person born in {x}", weight=1.5),
    Rel("works_for", ("person",), ("company", "agency", "institute"), "{subject} works for {object}.",
        ("Who does {x} work for?", "Which {otype} does {x} work for?", "Where does {x} work?",
         "Who employs {x}?"),
        ("Who works for {x}?",), "the employer of {x}", "the person who works for {x}"),
    Rel("member_of", ("company", "organization", "team"), ("organization",), "{subject} is a member of {object}.",
        ("What is {x} a member of?", "Which {otype} is {x} a member of?", "{x} belongs to which {otype}?"),
        ("Which {stype} is a member of {x}?",),
        "the {otype} that {x} is a member of", "the {stype} that is a member of {x}"),
    Rel("headquartered_in", ("company", "organization", "agency"), ("city",),
        "{subject} is headquartered in {object}.",
        ("Where is {x} headquartered?", "In which city is {x} headquartered?", "Where are the headquarters of {x}?",
         "In which city does {x} have its headquarters?"),
        ("Which {stype} is headquartered in {x}?",),
        "the city where {x} is headquartered", "the {stype} headquartered in {x}", weight=1.5),
    Rel("causes", ("virus",), ("disease",), "{subject} causes {object}.",
        ("What disease does {x} cause?", "What does {x} cause?", "Which disease is caused by {x}?"),
        ("What causes {x}?", "Which virus causes {x}?"), "the disease caused by {x}", "the virus that causes {x}"),
    Rel("treated_by", ("disease", "symptom"), ("drug",), "{subject} is treated by {object}.",
        ("Which drug is {x} treated by?", "What is {x} treated by?", "What is {x} treated with?",
         "Which drug treats {x}?", "What treats {x}?"),
        ("Which {stype} is treated by {x}?", "What does {x} treat?"),
        "the drug that treats {x}", "the {stype} treated by {x}", same="treats"),
    Rel("treats", ("drug",), ("disease", "symptom"), "{subject} treats {object}.",
        ("What does {x} treat?", "Which {otype} does {x} treat?", "What is {x} used to treat?"),
        ("Which drug treats {x}?", "What treats {x}?", "Which drug is {x} treated by?"),
        "the {otype} treated by {x}", "the drug that treats {x}", same="treated_by"),
    Rel("transmitted_by", ("virus",), ("vector",), "{subject} is transmitted by {object}.",
        ("What transmits {x}?", "What is {x} transmitted by?", "Which animal transmits {x}?",
         "What carries {x}?"),
        ("Which virus is transmitted by {x}?", "What does {x} transmit?"),
        "the animal that transmits {x}", "the virus transmitted by {x}"),
    Rel("discovered_by", ("virus", "disease", "drug"), ("person",), "{subject} was discovered by {object}.",
        ("Who discovered {x}?", "{x} was discovered by whom?", "Who is the discoverer of {x}?",
         "Who first identified {x}?"),
        ("What did {x} discover?", "Which {stype} was discovered by {x}?"),
        "the discoverer of {x}", "the {stype} discovered by {x}"),
    Rel("produces", ("company",), ("drug", "product"), "{subject} produces {object}.",
        ("What does {x} produce?", "Which {otype} does {x} produce?", "What does {x} make?"),
        ("Which company produces {x}?", "Who produces {x}?", "Who makes {x}?", "Which company makes {x}?"),
        "the {otype} produced by {x}", "the company that produces {x}", weight=1.5),
    Rel("leads", ("person",), ("company", "organization", "agency", "institute", "team"), "{subject} leads {object}.",
        ("What does {x} lead?", "Which {otype} does {x} lead?", "What is {x} the leader of?"),
        ("Who leads {x}?", "Who is the leader of {x}?", "Who heads {x}?", "Who is in charge of {x}?"),
        "the {otype} led by {x}", "the leader of {x}", weight=1.5),
    Rel("approved_by", ("drug", "product"), ("agency",), "{subject} was approved by {object}.",
        ("Which agency approved {x}?", "Who approved {x}?", "{x} was approved by which agency?",
         "What agency approved {x}?"),
        ("Which {stype} was approved by {x}?", "What did {x} approve?"),
        "the agency that approved {x}", "the {stype} approved by {x}"),
    Rel("uses", ("company", "person", "team"), ("product",), "{subject} uses {object}.",
        ("What does {x} use?", "Which product does {x} use?", "What product is used by {x}?"),
        ("Who uses {x}?", "Which {stype} uses {x}?"), "the product used by {x}", "the {stype} that uses {x}"),
    Rel("part_of", ("institute",), ("university",), "{subject} is part of {object}.",
        ("What is {x} part of?", "Which university is {x} part of?", "{x} is part of which university?"),
        ("Which institute is part of {x}?", "What is part of {x}?"),
        "the university that {x} is part of", "the institute that is part of {x}"),
    # ---- 26 more ----
    Rel("married_to", ("person",), ("person",), "{subject} is married to {object}.",
        ("Who is {x} married to?", "Who is the spouse of {x}?", "To whom is {x} married?",
         "Who is married to {x}?"), (), "the spouse of {x}", None, sym=True),
    Rel("child_of", ("person",), ("person",), "{subject} is the child of {object}.",
        ("Who is the parent of {x}?", "Whose child is {x}?", "Who is {x} the child of?"),
        ("Who is the child of {x}?", "Which person is a child of {x}?"), "the parent of {x}", "the child of {x}"),
    Rel("studied_at", ("person",), ("university",), "{subject} studied at {object}.",
        ("Where did {x} study?", "Which university did {x} attend?", "At which university did {x} study?"),
        ("Who studied at {x}?",), "the university where {x} studied", "the person who studied at {x}"),
    Rel("plays_for", ("person",), ("team",), "{subject} plays for {object}.",
        ("Which team does {x} play for?", "Who does {x} play for?", "For which team does {x} play?"),
        ("Who plays for {x}?", "Which player plays for {x}?"), "the team {x} plays for", "the player of {x}"),
    Rel("coached_by", ("team",), ("person",), "{subject} is coached by {object}.",
        ("Who coaches {x}?", "Who is the coach of {x}?", "{x} is coached by whom?"),
        ("Which team does {x} coach?", "What does {x} coach?"), "the coach of {x}", "the team coached by {x}"),
    Rel("written_by", ("book",), ("person",), "{subject} was written by {object}.",
        ("Who wrote {x}?", "Who is the author of {x}?", "{x} was written by whom?"),
        ("Which book did {x} write?", "What did {x} write?"), "the author of {x}", "the book written by {x}"),
    Rel("directed_by", ("film",), ("person",), "{subject} was directed by {object}.",
        ("Who directed {x}?", "Who is the director of {x}?", "{x} was directed by whom?"),
        ("Which film did {x} direct?", "What did {x} direct?"), "the director of {x}", "the film directed by {x}"),
    Rel("official_language", ("country",), ("language",), "The official language of {subject} is {object}.",
        ("What is the official language of {x}?", "Which language is official in {x}?",
         "What language is spoken in {x}?"),
        ("Which country has {x} as its official language?", "In which country is {x} the official language?"),
        "the official language of {x}", "the country whose official language is {x}"),
    Rel("currency_of", ("currency",), ("country",), "{subject} is the currency of {object}.",
        ("Which country uses {x} as its currency?", "{x} is the currency of which country?",
         "Where is {x} the currency?"),
        ("What is the currency of {x}?", "Which currency is used in {x}?", "What money is used in {x}?"),
        "the country whose currency is {x}", "the currency of {x}", inv_func=True),
    Rel("flows_through", ("river",), ("country", "city"), "{subject} flows through {object}.",
        ("Where does {x} flow?", "Which {otype} does {x} flow through?", "Through which {otype} does {x} flow?"),
        ("Which river flows through {x}?", "What river runs through {x}?"),
        "the {otype} that {x} flows through", "the river that flows through {x}"),
    Rel("borders", ("country",), ("country",), "{subject} borders {object}.",
        ("Which country borders {x}?", "What country does {x} border?", "Which country is next to {x}?"),
        (), "the neighbour of {x}", None, sym=True),
    Rel("owned_by", ("company", "team", "building"), ("person", "company"), "{subject} is owned by {object}.",
        ("Who owns {x}?", "Who is the owner of {x}?", "{x} is owned by whom?"),
        ("What does {x} own?", "Which {stype} is owned by {x}?"), "the owner of {x}", "the {stype} owned by {x}"),
    Rel("invented_by", ("product",), ("person",), "{subject} was invented by {object}.",
        ("Who invented {x}?", "Who is the inventor of {x}?", "{x} was invented by whom?"),
        ("What did {x} invent?", "Which product did {x} invent?"), "the inventor of {x}",
        "the product invented by {x}"),
    Rel("designed_by", ("building",), ("person",), "{subject} was designed by {object}.",
        ("Who designed {x}?", "Who is the architect of {x}?", "{x} was designed by whom?"),
        ("Which building did {x} design?", "What did {x} design?"), "the architect of {x}",
        "the building designed by {x}"),
    Rel("named_after", ("city", "building", "university"), ("person",), "{subject} is named after {object}.",
        ("Who is {x} named after?", "After whom is {x} named?", "{x} is named after whom?"),
        ("What is named after {x}?", "Which {stype} is named after {x}?"),
        "the person {x} is named after", "the {stype} named after {x}"),
    Rel("died_in", ("person",), ("city",), "{subject} died in {object}.",
        ("Where did {x} die?", "In which city did {x} die?", "What is the place of death of {x}?"),
        ("Who died in {x}?",), "the city where {x} died", "the person who died in {x}"),
    Rel("lives_in", ("person",), ("city",), "{subject} lives in {object}.",
        ("Where does {x} live?", "In which city does {x} live?", "Where is the home of {x}?"),
        ("Who lives in {x}?",), "the city where {x} lives", "the person who lives in {x}"),
    Rel("manufactured_in", ("product", "drug"), ("city",), "{subject} is manufactured in {object}.",
        ("Where is {x} manufactured?", "In which city is {x} made?", "Where is {x} made?"),
        ("Which {stype} is manufactured in {x}?", "What is made in {x}?"),
        "the city where {x} is manufactured", "the {stype} manufactured in {x}"),
    Rel("sponsored_by", ("team", "event"), ("company",), "{subject} is sponsored by {object}.",
        ("Who sponsors {x}?", "Which company sponsors {x}?", "Who is the sponsor of {x}?"),
        ("What does {x} sponsor?", "Which {stype} is sponsored by {x}?"),
        "the sponsor of {x}", "the {stype} sponsored by {x}"),
    Rel("mayor_of", ("person",), ("city",), "{subject} is the mayor of {object}.",
        ("Which city is {x} the mayor of?", "Where is {x} the mayor?", "{x} is the mayor of which city?"),
        ("Who is the mayor of {x}?", "Who is mayor of {x}?"), "the city whose mayor is {x}", "the mayor of {x}",
        inv_func=True),
    Rel("published_by", ("book",), ("publisher",), "{subject} was published by {object}.",
        ("Who published {x}?", "Which publisher published {x}?", "{x} was published by whom?"),
        ("Which book was published by {x}?", "What did {x} publish?"), "the publisher of {x}",
        "the book published by {x}"),
    Rel("released_in", ("film", "book", "product"), ("year",), "{subject} was released in {object}.",
        ("When was {x} released?", "In which year was {x} released?", "What year did {x} come out?"), ()),
    Rel("held_in", ("event",), ("city",), "{subject} is held in {object}.",
        ("Where is {x} held?", "In which city is {x} held?", "Where does {x} take place?"),
        ("Which event is held in {x}?", "What is held in {x}?"), "the city where {x} is held",
        "the event held in {x}"),
    Rel("symptom_of", ("symptom",), ("disease",), "{subject} is a symptom of {object}.",
        ("Which disease is {x} a symptom of?", "{x} is a symptom of which disease?",
         "Of which disease is {x} a symptom?"),
        ("What is a symptom of {x}?", "Which symptom does {x} cause?"), "the disease with the symptom {x}",
        "the symptom of {x}"),
    Rel("home_ground", ("team",), ("building",), "{subject} plays its home games at {object}.",
        ("Where does {x} play its home games?", "What is the home ground of {x}?",
         "Which building is the home of {x}?"),
        ("Which team plays its home games at {x}?", "Whose home ground is {x}?"),
        "the home ground of {x}", "the team whose home ground is {x}"),
    Rel("speaks", ("person",), ("language",), "{subject} speaks {object}.",
        ("What language does {x} speak?", "Which language does {x} speak?", "Which language is spoken by {x}?"),
        ("Who speaks {x}?",), "the language {x} speaks", "the person who speaks {x}"),
    Rel("is_a", tuple(t for t in TYPE_WORD if t != "year"), ("@type",), "{subject} is a {object}.",
        ("What is {x}?", "What kind of thing is {x}?", "What type of entity is {x}?"), (), None, None,
        weight=0.25),
]

RELATIONS: dict[str, Rel] = {r.name: r for r in R}
NEW_TEMPLATES = {r.name: r.template for r in R if r.name not in SAMPLE_RELATIONS and r.name != "is_a"}
assert len(NEW_TEMPLATES) >= 20, len(NEW_TEMPLATES)
ALL_TEMPLATES = {r.name: r.template for r in R}
# types that read better with an article in a question ("the Grellan virus")
ARTICLE_TYPES = {"virus", "institute", "organization", "agency", "university", "river", "event", "building",
                 "team", "currency"}
