"""Named token classes: the one shared library of word classes programs are written with.

Each class is a predicate over one token's decoded text (``Pred``), so it is a table over the
vocabulary and causal by construction (it reads one token, never its neighbours). Classes are
defined by the rules and lexicons below, written for this project and kept here (no tagger,
no download): a run-time tagger would read the future, and an offline one would be no better
on single tokens, which carry no context. Lexicon classes match the stripped, lower-cased
piece; a subword continuation (a piece without a leading space, e.g. ``"ing"``) is a word
class only where the rule says so.

=================  ===========================================================================
class              rule
=================  ===========================================================================
pronoun            lexicon ``PRONOUNS`` (personal, possessive, reflexive, indefinite)
determiner         lexicon ``DETERMINERS`` (articles, demonstratives, quantifiers)
preposition        lexicon ``PREPOSITIONS``
conjunction        lexicon ``CONJUNCTIONS`` (coordinating and subordinating)
auxiliary          lexicon ``AUXILIARIES`` (be, have, do, modals)
name               a capitalised alphabetic word that is in no function lexicon and not a
                   common sentence opener (``OPENERS``)
verb_like          ``auxiliary``, lexicon ``VERBS`` (base and past forms), or an alphabetic word
                   or continuation piece ending in -ed / -ing (word of 5+ letters)
adjective_like     lexicon ``ADJECTIVES`` or a word ending in -ful/-ous/-ive/-able/-less/-ish/-est
adverb_like        lexicon ``ADVERBS`` or a word of 5+ letters ending in -ly
noun_like          any other alphabetic word that starts a word (leading space or capital)
number             digits, or a number word (``NUMBER_WORDS``)
punct, comma, sentence_end, quote, newline    as in ``compiler.predicates``
clause_boundary    punctuation that ends a clause (``, ; : . ! ?``), or a newline
=================  ===========================================================================
"""

from __future__ import annotations

from headcode.compiler import predicates as P
from headcode.compiler.predicates import Pred


def _lex(text: str) -> frozenset[str]:
    return frozenset(text.split())


PRONOUNS = _lex("""i me my mine myself you your yours yourself yourselves he him his himself she her hers
    herself it its itself we us our ours ourselves they them their theirs themselves who whom whose
    someone everyone anyone nobody somebody everybody something everything anything nothing""")
DETERMINERS = _lex("""a an the this that these those some any each every no another all both either
    neither many much few several such""")
PREPOSITIONS = _lex("""of in on at by for with from into onto over under above below behind beside
    between through across along around about after before during until toward towards near up
    down out off inside outside without within upon like past since against among beneath""")
CONJUNCTIONS = _lex("""and or but so because if when while although though unless yet nor whether
    than once""")
AUXILIARIES = _lex("""is am are was were be been being do does did has have had will would can could
    shall should may might must 's 're 've 'll 'd 'm n't""")
VERBS = _lex("""go went gone goes going come came comes see saw seen sees look looked say said says
    tell told ask asked run ran runs play played plays want wanted wants like liked likes love loved
    loves make made makes take took taken get got give gave given find found think thought know
    knew feel felt help helped jump jumped walk walked eat ate sit sat stand stood smile smiled
    laugh laughed cry cried try tried need needed hear heard hold held fly flew swim swam sing sang
    draw drew read write wrote open opened close closed start started stop stopped keep kept let
    put bring brought begin began call called show showed hug hugged share shared learn learned
    decide decided wait waited climb climbed fall fell leave left meet met buy bought build built
    become became turn turned live lived grow grew pick picked catch caught throw threw""")
ADJECTIVES = _lex("""big small little tiny large huge happy sad good bad great new old young red blue
    green yellow pink purple white black brown kind nice pretty shiny soft hard warm cold hot fast
    slow tall short long brave scared angry funny silly strong weak dark bright loud quiet sweet
    special best favorite favourite beautiful wonderful careful sure excited tired hungry busy
    clean dirty wet dry empty full high low smart gentle friendly curious""")
ADVERBS = _lex("""very too also just then now there here always never soon again often still even
    away back together maybe really almost already not""")
NUMBER_WORDS = _lex("""one two three four five six seven eight nine ten eleven twelve twenty hundred
    thousand first second third""")
OPENERS = _lex("""once one the a an then suddenly one day after finally every when there this that
    but and so yes no oh hello hi please thank thanks""")

FUNCTION_LEXICON = PRONOUNS | DETERMINERS | PREPOSITIONS | CONJUNCTIONS | AUXILIARIES


def _word(p: str) -> str:
    return p.strip().lower()


def _alpha_word(p: str) -> bool:
    s = p.strip()
    return bool(s) and s.isalpha()


def _starts_word(p: str) -> bool:
    return p[:1] in (" ", "\t", "\n") or p[:1].isupper()


def _name(p: str) -> bool:
    s = p.strip()
    return (_alpha_word(p) and s[0].isupper() and len(s) > 1 and _word(p) not in FUNCTION_LEXICON
            and _word(p) not in OPENERS and _word(p) not in ADVERBS)


def _verb(p: str) -> bool:
    w = _word(p)
    if w in AUXILIARIES or w in VERBS:
        return True
    if not _alpha_word(p) or w in FUNCTION_LEXICON:
        return False
    if not _starts_word(p):  # a continuation piece: the suffix itself
        return w in ("ed", "ing", "ied")
    return len(w) >= 5 and (w.endswith("ed") or w.endswith("ing"))


def _adjective(p: str) -> bool:
    w = _word(p)
    if w in ADJECTIVES:
        return True
    return (_alpha_word(p) and _starts_word(p) and len(w) >= 5 and w not in FUNCTION_LEXICON
            and w.endswith(("ful", "ous", "ive", "able", "less", "ish", "est")))


def _adverb(p: str) -> bool:
    w = _word(p)
    return w in ADVERBS or (_alpha_word(p) and _starts_word(p) and len(w) >= 5 and w.endswith("ly"))


def _noun(p: str) -> bool:
    w = _word(p)
    return (_alpha_word(p) and _starts_word(p) and w not in FUNCTION_LEXICON and not _verb(p)
            and not _adjective(p) and not _adverb(p) and w not in NUMBER_WORDS)


def _number(p: str) -> bool:
    s = p.strip()
    return (bool(s) and any(c.isdigit() for c in s) and all(c.isdigit() or c in ".,:" for c in s)) \
        or _word(p) in NUMBER_WORDS


pronoun = Pred("pronoun", lambda p: _word(p) in PRONOUNS)
determiner = Pred("determiner", lambda p: _word(p) in DETERMINERS)
preposition = Pred("preposition", lambda p: _word(p) in PREPOSITIONS)
conjunction = Pred("conjunction", lambda p: _word(p) in CONJUNCTIONS)
auxiliary = Pred("auxiliary", lambda p: _word(p) in AUXILIARIES)
name = Pred("name", _name)
verb_like = Pred("verb_like", _verb)
adjective_like = Pred("adjective_like", _adjective)
adverb_like = Pred("adverb_like", _adverb)
noun_like = Pred("noun_like", _noun)
number = Pred("number", _number)
clause_boundary = Pred("clause_boundary", lambda p: p.strip() in (",", ";", ":", ".", "!", "?") or "\n" in p
                       or (P._punct(p) and any(c in ",;:.!?" for c in p)))

# name -> the phrase a reader sees (the English descriptions use it), one class a line
_PHRASES = """
pronoun: a pronoun
determiner: a determiner
preposition: a preposition
conjunction: a conjunction
auxiliary: an auxiliary verb
name: a name
verb_like: a verb-like word
adjective_like: an adjective-like word
adverb_like: an adverb-like word
noun_like: a noun-like word
number: a number
clause_boundary: a clause boundary
punct: punctuation
comma: a comma
sentence_end: a sentence end
quote: a quote mark
newline: a newline
capitalised: a capitalised word
function_word: a function word
content_word: a content word
word_start: a word start
alpha: a word
digit: a digit
space: whitespace
boundary: a sentence boundary
new_word: a new word
"""
_PREDS = {p.name: p for p in (
    pronoun, determiner, preposition, conjunction, auxiliary, name, verb_like, adjective_like, adverb_like,
    noun_like, number, clause_boundary, P.punct, P.comma, P.sentence_end, P.quote, P.newline, P.capitalised,
    P.function_word, P.content_word, P.word_start, P.alpha, P.digit, P.space, P.boundary, P.new_word)}
CLASSES: dict[str, tuple[Pred, str]] = {
    n: (_PREDS[n], phrase) for n, phrase in (line.split(": ", 1) for line in _PHRASES.strip().splitlines())
}

CLASS_PREDS: dict[str, Pred] = {k: v[0] for k, v in CLASSES.items()}


def meaning(pred_name: str) -> str:
    """A reader's phrase for a predicate name: ``"a noun-like word"``, ``"not punctuation"``,
    ``"one of 'the', 'a'"``; composite names are described part by part."""
    n = pred_name.strip()
    if n in CLASSES:
        return CLASSES[n][1]
    if n.startswith("~"):
        return "not " + meaning(n[1:])
    if n.startswith("token_in(") and n.endswith(")"):
        words = [w.strip() for w in n[len("token_in("):-1].split(",") if w.strip()]
        return repr(words[0]) if len(words) == 1 else "one of " + ", ".join(repr(w) for w in words)
    if n.startswith("(") and n.endswith(")"):
        inner = n[1:-1]
        for op, word in ((" & ", " and "), (" | ", " or ")):
            parts = _split_top(inner, op)
            if len(parts) > 1:
                return word.join(meaning(x) for x in parts)
    return n.replace("_", " ")


def _split_top(s: str, op: str) -> list[str]:
    """Split ``s`` on ``op`` outside parentheses."""
    out, depth, cur, i = [], 0, "", 0
    while i < len(s):
        if s[i] in "([":
            depth += 1
        elif s[i] in ")]":
            depth -= 1
        if depth == 0 and s.startswith(op, i):
            out.append(cur)
            cur, i = "", i + len(op)
            continue
        cur += s[i]
        i += 1
    return out + [cur]


def bare(pred: Pred | str | None) -> str:
    """``"noun-like word"`` for ``noun_like``: the class's phrase without its article."""
    name = getattr(pred, "name", pred)
    m = meaning(name) if name is not None else "token"
    for art in ("a ", "an "):
        if m.startswith(art):
            return m[len(art):]
    return m
