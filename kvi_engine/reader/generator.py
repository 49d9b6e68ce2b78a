"""Seeded generator of synthetic fact-reading QA: random entities, short documents of facts, 1-hop and 2-hop questions.

    ctx = Generator(seed=0, split="train").context(n_facts=16, n_questions=4, hops=(1, 2))
    ctx.facts     -> ["Valtor Biotech was founded by Ines Kadrow.", ...]   (statements, shuffled)
    ctx.triples   -> [(subject, relation, object), ...]                   (same order)
    ctx.questions -> [QA(question, answer, hops, support=[fact indices])]

Names: syllable words, never a word of the blocklist (every word of the sample corpus and of the evaluation sets
that the syllable grammar could produce; see build_blocklist). Train/held-out split by a hash of the full name:
held-out entities (split="test") are never generated for training, so held-out facts are never seen in training.
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from kvi_engine.reader.schema import ARTICLE_TYPES, RELATIONS, TYPE_WORD
from kvi_engine.utils.paths import SHARED_SETS, shared_data_dir

HERE = Path(__file__).parent
BLOCKLIST_FILE = HERE / "blocklist.txt"

ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "br", "dr", "gr", "kr", "tr", "st", "sh", "th", "")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "ai", "ei", "ou", "y")
CODAS = ("", "", "", "", "", "", "n", "r", "l", "s", "m", "k", "n", "r", "nd", "st", "x", "sk", "th", "v")
WORD_RE = re.compile(r"^[a-z]{3,14}$")
CORE_RE = re.compile(r"^[a-z]{4,9}$")

SUFFIX = {
    "city": ("", "", "", "sk", "burg", "ford", "mouth", "vale", "ton", "grad", "holm"),
    "country": ("ia", "any", "ova", "land", "istan", "ar", "ea", "ia", "onia"),
    "company": (" Biotech", " Systems", " Pharmaceuticals", " Industries", " Labs", " Group", " Motors", " Foods",
                " Energy", " Logistics", " Dynamics", " Works"),
    "organization": (" Health Alliance", " Trade Union", " Council", " Federation", " Society", " League",
                     " Alliance", " Association"),
    "institute": (" Institute",),
    "virus": (" virus",),
    "disease": (" fever", " syndrome", " disease", " pox", " flu"),
    "drug": ("trex", "zol", "mab", "ine", "ex", "ol", "ide", "afen", "cillin", "vir"),
    "product": (" sensor", " phone", " engine", " tablet", " drone", " valve", " scanner", " monitor", " pump"),
    "agency": (" Medicines Agency", " Food Authority", " Health Agency", " Drug Board", " Safety Agency"),
    "language": ("ish", "ese", "ic", "i", "an"),
    "team": (" Rovers", " United", " Falcons", " Wolves", " Athletic", " Giants", " Rangers"),
    "book": (" Chronicles", " Letters", " Garden", " Tide", " Road", " Archive"),
    "film": (" Rising", " Nights", " Protocol", " Heart", " Run", " Horizon"),
    "currency": (" mark", " crown", " dinar", " florin", " peso", " shilling"),
    "building": (" Tower", " Hall", " Stadium", " Arena", " Palace", " Bridge", " Library"),
    "event": (" Festival", " Games", " Expo", " Summit", " Marathon", " Fair"),
    "symptom": (" rash", " cough", " tremor", " palsy", " fatigue"),
    "publisher": (" Press", " Books", " Publishing", " House"),
}
ANIMALS = ("tick", "mosquito", "bat", "rat", "fly", "beetle", "mite", "flea", "snail", "midge")


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


# letters by rough English frequency: rare-piece cores ("kestrel"-like strings the BPE has no merges for)
LETTERS = "eeeeeaaaaiiiioooonnnnrrrrsssstttlllcccdddmmuuhhgppbbyfwkvzxjq"


def _rare_core(rng: random.Random) -> str:
    """A core of random letters (no syllable grammar): its tokens are the BPE's rare pieces, as real names outside
    the generator's grammar are -- training on some of them teaches copying whatever the pieces."""
    while True:
        w = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 9)))
        if CORE_RE.match(w) and not re.search(r"(.)\1\1", w):
            return w


def _core(rng: random.Random, lo=2, hi=2) -> str:
    while True:
        w = "".join(_syllable(rng) for _ in range(rng.randint(lo, hi)))
        if CORE_RE.match(w) and not re.search(r"(.)\1\1", w):
            return w


def load_blocklist() -> frozenset:
    if BLOCKLIST_FILE.exists():
        return frozenset(BLOCKLIST_FILE.read_text().split())
    return frozenset()


def is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % 10 == 0


@dataclass
class QA:
    question: str
    answer: str
    hops: int
    support: list = field(default_factory=list)  # fact indices, hop order


@dataclass
class Context:
    facts: list
    triples: list
    questions: list


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def direction(triples, support, answer) -> str:
    """``fwd`` where the answer is the object of the (last) supporting fact, ``inv`` where it is the subject. The
    two are different tasks for a causal reader: a forward answer follows its key (subject + relation) in the
    fact; an inverse answer precedes it, so the fact's later tokens must have carried the subject forward."""
    s, _, o = triples[support[-1]]
    return "fwd" if answer == o else "inv"


class Generator:
    def __init__(self, seed: int = 0, split: str = "train", blocklist: frozenset | None = None,
                 p_rare: float = 0.0, p_inverse: float | None = None):
        """``p_rare``: the share of name cores made of random letters instead of syllables (training option; the
        held-out sets use syllables only, 0). ``p_inverse``: the chance that a question whose relation can be asked
        both ways asks for the subject (``None``: an even choice -- the held-out sets; a float draws differently, so
        it is a training option only)."""
        assert split in ("train", "test")
        self.rng = random.Random(seed)
        self.p_rare = p_rare
        self.p_inverse = p_inverse
        self.split = split
        self.block = load_blocklist() if blocklist is None else blocklist
        # types usable as subject/object of some relation, with relations where they appear
        self.rels = [r for r in RELATIONS.values()]
        self.by_type: dict[str, list] = {}
        for r in self.rels:
            for t in r.subj:
                self.by_type.setdefault(t, []).append((r, "s"))
            for t in r.obj:
                if t != "@type":
                    self.by_type.setdefault(t, []).append((r, "o"))
        self.types = sorted(t for t in self.by_type if t != "year")

    # ---------------- names ----------------
    def _word_ok(self, w: str, used_cores: set) -> bool:
        return w not in self.block and w not in used_cores

    def new_name(self, etype: str, used_names: set, used_cores: set) -> str:
        rng = self.rng
        for _ in range(1000):
            if etype == "year":
                return str(rng.randint(1700, 2030))
            core = (lambda lo=2, hi=2: _rare_core(rng) if self.p_rare and rng.random() < self.p_rare
                    else _core(rng, lo, hi))
            cores = [core()]
            if etype == "person":
                cores.append(core(2, 3 if rng.random() < 0.3 else 2))
                name = " ".join(c.capitalize() for c in cores)
            elif etype == "vector":
                if rng.random() < 0.5:
                    name = f"{cores[0]} {rng.choice(ANIMALS)}"
                else:
                    name = f"{cores[0].capitalize()} {rng.choice(ANIMALS)}"
            elif etype == "university":
                name = f"University of {cores[0].capitalize()}" if rng.random() < 0.5 else \
                    f"{cores[0].capitalize()} University"
            elif etype == "river":
                name = f"{cores[0].capitalize()} River"
            elif etype == "book":
                name = f"The {cores[0].capitalize()}{rng.choice(SUFFIX['book'])}"
            else:
                name = cores[0].capitalize() + rng.choice(SUFFIX[etype])
            if any(not self._word_ok(c, used_cores) for c in cores):
                continue
            # the suffix may glue to the core ("Tamsk"): check the glued word as well
            if any(w.lower() in self.block for w in re.findall(r"[A-Za-z]+", name) if w.lower() not in _FIXED):
                continue
            if name in used_names or (is_heldout(name) != (self.split == "test")):
                continue
            used_names.add(name)
            used_cores.update(cores)
            return name
        raise RuntimeError("name space exhausted")

    # ---------------- world ----------------
    def world(self, n_facts: int):
        """A context of ``n_facts`` facts grown as documents of 1-12 connected facts."""
        rng = self.rng
        ents: dict[str, str] = {}
        names, cores = set(), set()
        triples: list = []
        out_keys: set = set()  # (subject, relation): every relation is functional
        in_keys: set = set()  # (object, relation): for one-to-one relations (Rel.inv_func)
        sym_used: set = set()

        def ent(t):
            n = self.new_name(t, names, cores)
            ents.setdefault(n, t)
            return n

        def add(s, r, o) -> bool:
            if s == o or (s, r.name) in out_keys or (r.inv_func and (o, r.name) in in_keys):
                return False
            if r.sym and ((s, r.name) in sym_used or (o, r.name) in sym_used):
                return False
            out_keys.add((s, r.name))
            in_keys.add((o, r.name))
            if r.sym:
                sym_used.update({(s, r.name), (o, r.name)})
            triples.append((s, r.name, o))
            return True

        while len(triples) < n_facts:
            doc_len = min(n_facts - len(triples), rng.randint(1, 12))
            seed_t = rng.choice(self.types)
            doc = [ent(seed_t)]
            made, tries = 0, 0
            while made < doc_len and tries < doc_len * 20:
                tries += 1
                e = rng.choice(doc) if rng.random() < 0.8 else doc[-1]
                t = ents[e]
                cands = self.by_type.get(t, [])
                if not cands:
                    continue
                r, side = rng.choices(cands, weights=[c[0].weight for c in cands])[0]
                if r.name == "is_a":
                    if side == "s" and add(e, r, TYPE_WORD[t]):
                        made += 1
                    continue
                other_t = rng.choice(r.obj if side == "s" else r.subj)
                pool = [x for x, xt in ents.items() if xt == other_t and x != e] if other_t != "year" else []
                if pool and rng.random() < 0.2:
                    other = rng.choice(pool)
                else:
                    other = ent(other_t)
                s, o = (e, other) if side == "s" else (other, e)
                if add(s, r, o):
                    made += 1
                    if other_t != "year" and other not in doc:
                        doc.append(other)
        triples = triples[:n_facts]
        rng.shuffle(triples)
        return triples, ents

    # ---------------- questions ----------------
    @staticmethod
    def _index(triples):
        fwd, inv = {}, {}
        for i, (s, r, o) in enumerate(triples):
            rel = RELATIONS[r]
            if rel.same is not None and r == "treated_by":  # state as treats(o, s)
                s, r, o = o, "treats", s
            fwd.setdefault((s, r), set()).add((o, i))
            inv.setdefault((o, r), set()).add((s, i))
            if rel.sym:
                fwd.setdefault((o, r), set()).add((s, i))
        return fwd, inv

    @staticmethod
    def _lookup(fwd, inv, x, r, d):
        """Answers (entity, fact index) of asking relation ``r`` in direction ``d`` about ``x``."""
        if r == "treated_by":
            r, d = "treats", ("inv" if d == "fwd" else "fwd")
        return (fwd if d == "fwd" else inv).get((x, r), set())

    def _mention(self, name, ents):
        t = ents.get(name)
        if t in ARTICLE_TYPES and not name.startswith("The ") and self.rng.random() < 0.5:
            return "the " + name
        return name

    def _phrase(self, r, d, x_text, s_type, o_type):
        rel = RELATIONS[r]
        tpl = self.rng.choice(rel.fwd if d == "fwd" else rel.inv)
        q = tpl.replace("{otype}", TYPE_WORD.get(o_type, "thing")).replace("{stype}", TYPE_WORD.get(s_type, "thing"))
        return _cap(q.replace("{x}", x_text))

    def _direction(self, opts):
        """Forward (ask the object) or inverse (ask the subject). Inverse lookups are the hard ones for a causal
        reader: the answer precedes the key in the fact, so the fact's end has to carry its subject forward."""
        if self.p_inverse is None or len(opts) == 1:
            return self.rng.choice(opts)
        return "inv" if self.rng.random() < self.p_inverse else "fwd"

    def one_hop(self, triples, ents, fwd, inv, i):
        s, r, o = triples[i]
        rel = RELATIONS[r]
        opts = ["fwd"] + (["inv"] if rel.inv and ents.get(o) not in (None, "year") else [])
        d = self._direction(opts)
        x, ans = (s, o) if d == "fwd" else (o, s)
        got = self._lookup(fwd, inv, x, r, d)
        if len({a for a, _ in got}) != 1:
            return None
        q = self._phrase(r, d, self._mention(x, ents), ents.get(s), ents.get(o, "thing"))
        return QA(q, ans, 1, [i])

    def two_hop(self, triples, ents, fwd, inv, i, j_candidates):
        """Chain fact i (A -> B) and a fact j about B (B -> C)."""
        rng = self.rng
        s, r, o = triples[i]
        rel = RELATIONS[r]
        dirs = []
        if rel.fwd_np and ents.get(o) not in (None, "year"):
            dirs.append("fwd")
        if rel.inv_np and ents.get(o) not in (None, "year"):
            dirs.append("inv")
        if not dirs:
            return None
        d1 = self._direction(dirs)
        A, B = (s, o) if d1 == "fwd" else (o, s)
        got = self._lookup(fwd, inv, A, r, d1)
        if len({a for a, _ in got}) != 1:
            return None
        np_tpl = rel.fwd_np if d1 == "fwd" else rel.inv_np
        np_text = np_tpl.replace("{otype}", TYPE_WORD.get(ents.get(o), "thing")).replace(
            "{stype}", TYPE_WORD.get(ents.get(s), "thing")).replace("{x}", self._mention(A, ents))
        # second hop: a fact with B on one side, not the same fact
        cands = [j for j in j_candidates if j != i and B in (triples[j][0], triples[j][2])]
        rng.shuffle(cands)
        for j in cands:
            s2, r2, o2 = triples[j]
            rel2 = RELATIONS[r2]
            if r2 == "is_a":
                continue
            if rel2.sym:
                d2 = "fwd"
                C = o2 if s2 == B else s2
            elif s2 == B:
                d2, C = "fwd", o2
            else:
                if not rel2.inv or ents.get(o2) == "year":
                    continue
                d2, C = "inv", s2
            if C == A or C == B:
                continue
            got2 = self._lookup(fwd, inv, B, r2, d2)
            if len({a for a, _ in got2}) != 1:
                continue
            q = self._phrase(r2, d2, np_text, ents.get(s2), ents.get(o2, "thing"))
            return QA(q, C, 2, [i, j])
        return None

    def context(self, n_facts: int, n_questions: int = 1, hops=(1,), p_two_hop: float = 0.0,
                max_tries: int = 200) -> Context:
        """A context of ``n_facts`` facts and ``n_questions`` questions about them.

        ``hops`` are the hop counts the FIRST question must have (one chosen at random); further questions are
        2-hop with probability ``p_two_hop`` where possible. Questions are distinct."""
        rng = self.rng
        need = rng.choice([h for h in hops if h <= n_facts] or [1])
        for _ in range(max_tries):
            triples, ents = self.world(n_facts)
            fwd, inv = self._index(triples)
            order = list(range(len(triples)))
            rng.shuffle(order)
            qs, seen = [], set()
            for k in range(n_questions * 4):
                want = need if not qs else (2 if rng.random() < p_two_hop else 1)
                i = order[k % len(order)] if k < len(order) else rng.randrange(len(triples))
                qa = self.one_hop(triples, ents, fwd, inv, i) if want == 1 else \
                    self.two_hop(triples, ents, fwd, inv, i, range(len(triples)))
                if qa is None and want == 2 and qs:
                    qa = self.one_hop(triples, ents, fwd, inv, i)
                if qa is None or qa.question in seen:
                    if not qs:
                        continue
                    continue
                if not qs and qa.hops != need:
                    continue
                qs.append(qa)
                seen.add(qa.question)
                if len(qs) == n_questions:
                    break
            if qs:
                from kvi_engine.reader.schema import ALL_TEMPLATES
                facts = [ALL_TEMPLATES[r].format(subject=s, object=o) for s, r, o in triples]
                return Context(facts, triples, qs)
        raise RuntimeError(f"could not build a context with {n_facts} facts and a {need}-hop question")


_FIXED = {w.lower() for v in SUFFIX.values() for s in v for w in re.findall(r"[A-Za-z]+", s)} | \
         {"university", "of", "river", "the"} | set(ANIMALS)


def build_blocklist(paths) -> set:
    """Every lower-cased word of the given text files that the name grammar could produce (3-14 letters)."""
    words = set()
    for p in paths:
        for w in re.findall(r"[^\W\d_]+", Path(p).read_text(encoding="utf-8", errors="replace")):
            w = w.lower()
            if WORD_RE.match(w):
                words.add(w)
    return words


def eval_data_dir() -> Path | None:
    """Where the real evaluation sets live (:func:`kvi_engine.utils.paths.shared_data_dir`: ``KVI_SHARED_DATA`` or
    ``../shared/data``); ``None`` where they are not on this machine. Read in place."""
    try:
        return shared_data_dir()
    except FileNotFoundError:
        return None


def blocklist_sources(include_eval: bool = True) -> list[Path]:
    """The files whose words generated names must avoid: the package's data (sample corpus, KPR set) and, where
    present, the evaluation sets' docs and questions."""
    data = Path(__file__).resolve().parent.parent / "data"
    out = sorted(data.glob("**/*.jsonl")) + sorted(data.glob("**/*.md"))
    root = eval_data_dir() if include_eval else None
    if root is not None:
        for d in SHARED_SETS:
            out += [p for p in (root / d / "docs.jsonl", root / d / "questions.jsonl") if p.is_file()]
    return out


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["blocklist"]:
        words = build_blocklist(blocklist_sources())
        BLOCKLIST_FILE.write_text("\n".join(sorted(words)) + "\n")
        print(len(words), "words ->", BLOCKLIST_FILE)
    else:
        g = Generator(seed=int(sys.argv[1]) if sys.argv[1:] else 0)
        for n, h in ((4, (1,)), (8, (2,)), (16, (1, 2))):
            c = g.context(n, 4, hops=h, p_two_hop=0.3)
            print("\n".join("- " + f for f in c.facts))
            for q in c.questions:
                print(f"  Q{q.hops}: {q.question} -> {q.answer}   {q.support}")
            print()
