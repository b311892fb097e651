"""Words, lines, n-grams, sentences and stop words for the heuristic quality filters, for a whole batch at once.

Words follow the tokenisation datatrove gets from spaCy's English rules, emulated with Arrow regex rewrites,
so the published thresholds keep their meaning without a tokenizer call per document.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.stages.words import whitespace_words


def char_class(characters: str, extra: str = "", negated: bool = False) -> str:
    """An RE2 character class matching exactly `characters` (escaped, so any character is safe)."""
    escaped = "".join(f"\\x{{{ord(character):x}}}" for character in sorted(set(characters)))
    return ("[^" if negated else "[") + escaped + extra + "]"


# Unicode Sentence_Terminal characters: FineWeb's line endings, spaCy's sentence boundaries.
TERMINAL_PUNCTUATION = frozenset(
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟\u1b7d\u1b7e᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼\u2e53\u2e54"
    "。꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡𐩖𐩗𐽕𐽖𐽗𐽘𐽙\U00010f86\U00010f87\U00010f88\U00010f89"
    "𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑥄𑥆𑩂𑩃𑪛𑪜𑱁𑱂𑻷𑻸"
    "\U00011f43\U00011f44𖩮𖩯𖫵𖬷𖬸𖭄𖺘𛲟𝪈៕៖។៙៚"
)
# Characters that make a word a "symbol" for Gopher (datatrove's set): mostly punctuation, plus a few
# maths signs, control characters and the sentence terminals above.
SYMBOL_CHARACTERS = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, [*range(0, 9), 11, 12, *range(13, 32), *range(127, 160)]))
) | TERMINAL_PUNCTUATION

# Languages written without spaces between words: rules that count words are skipped for them.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})

# The most frequent function words per language. English is Gopher's own list, kept exact for parity.
STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the be to of and that have with".split()),
    "de": frozenset(
        "der die das und in zu den von mit sich des auf für ist im dem nicht ein eine als auch es an "
        "werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum".split()
    ),
    "fr": frozenset(
        "le la les de des du et à un une est en que qui dans pour pas sur au aux avec ce il elle ne se "
        "par plus son sa ses sont ou mais nous vous leur cette été être".split()
    ),
    "es": frozenset(
        "el la los las de del y a en que un una es por con no se su sus para al lo como más pero le "
        "ya o este esta fue ha son entre cuando muy sin sobre también".split()
    ),
    "it": frozenset(
        "il lo la i gli le di del della dei e a in che un una è per con non si da al alla nel nella "
        "sono come più ma anche questo questa ha era tra".split()
    ),
    "pt": frozenset(
        "o a os as de do da dos das e em no na que um uma é para com não se por ao mais como mas foi "
        "seu sua ou ser quando muito também está pelo pela".split()
    ),
    "nl": frozenset(
        "de het een en van in is dat op te zijn met voor niet aan er die ook als bij door maar om dan "
        "nog wel was werd worden naar uit".split()
    ),
    "ru": frozenset(
        "и в не на что с по он она как а то это к из у за от так же все но для мы был была бы его её "
        "они вы о только уже или".split()
    ),
}


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where there is nothing to divide by (datatrove would raise)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow array as numpy (booleans and arrays with nulls are copied)."""
    return array.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class Pieces:
    """Flat pieces (words or lines) of a batch of texts, each with the row it came from."""

    values: pa.Array
    rows: np.ndarray
    num_rows: int

    def count(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Pieces per row, or pieces where `mask` holds."""
        rows = self.rows if mask is None else self.rows[mask]
        return np.bincount(rows, minlength=self.num_rows)

    def total(self, values: np.ndarray) -> np.ndarray:
        """Sum of `values` (one per piece) per row."""
        return np.bincount(self.rows, weights=values, minlength=self.num_rows)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """Characters in each piece."""
        return to_numpy(pc.utf8_length(self.values)).astype(np.int64)

    @functools.cached_property
    def cumulative_lengths(self) -> np.ndarray:
        """Characters before each piece (and after the last), over the whole batch."""
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def matches(self, pattern: str) -> np.ndarray:
        return to_numpy(pc.match_substring_regex(self.values, pattern))


def _pieces(lists: pa.ListArray | pa.ChunkedArray, num_rows: int) -> Pieces:
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    rows = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
    return Pieces(pc.list_flatten(lists), rows, num_rows)


def _texts(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return pc.fill_null(texts.cast(pa.large_string()), "")


def split_on(texts: pa.Array, pattern: str) -> Pieces:
    """Split every text like Python's `re.split(pattern, text)`."""
    texts = _texts(texts)
    return _pieces(pc.split_pattern_regex(texts, pattern), len(texts))


# Python's whitespace (str.isspace) and line breaks (str.splitlines).
WHITESPACE = "".join(character for character in map(chr, range(0x3001)) if character.isspace())
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
LINE_BREAK = r"\r\n|" + char_class(_LINE_BREAKS)
_ENDS_WITH_LINE_BREAK = rf"(?:{LINE_BREAK})$"
SPACE = char_class("".join(character for character in WHITESPACE if character not in _LINE_BREAKS))


def split_lines(texts: pa.Array) -> Pieces:
    """Split every text like Python's `str.splitlines()` (no empty last line, no line at all for '')."""
    texts = _texts(texts)
    pieces = split_on(texts, LINE_BREAK)
    drops_last = pc.or_(pc.equal(texts, ""), pc.match_substring_regex(texts, _ENDS_WITH_LINE_BREAK))
    drops_last = to_numpy(drops_last)
    if not drops_last.any():
        return pieces
    counts = pieces.count()
    last = np.cumsum(counts) - 1
    keep = np.ones(len(pieces.rows), dtype=bool)
    keep[last[drops_last]] = False
    return Pieces(pieces.values.filter(pa.array(keep)), pieces.rows[keep], pieces.num_rows)


def count_lines(texts: pa.Array) -> np.ndarray:
    """`len(text.splitlines())` per text, without splitting."""
    texts = _texts(texts)
    breaks = to_numpy(pc.count_substring_regex(texts, LINE_BREAK))
    drops_last = pc.or_(pc.equal(texts, ""), pc.match_substring_regex(texts, _ENDS_WITH_LINE_BREAK))
    return breaks + 1 - to_numpy(drops_last)


# ---------------------------------------------------------------------------------------------------
# Words: spaCy's English tokenizer, emulated. A text is split on whitespace into chunks; chunks of letters
# and digits are words as they are (bar a few contractions and "10km"). From the others, prefix marks are
# split off the front and suffix marks off the back, one token each (spaCy peels them one at a time), then
# contractions and infixes ("well-known" -> well - known) are split in what remains, and spaCy's special
# cases (emoticons, "and/or") are joined back. Each step is one Arrow call over the distinct chunks.

_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_CURRENCY = "$£€¥฿₽﷼₴" + "".join(map(chr, range(0x20A0, 0x20C0)))
PREFIX = char_class("§%=—–" + _PUNCT + _QUOTES + _CURRENCY, extra=r"\p{So}")
SUFFIX = char_class("—–" + _PUNCT + _QUOTES, extra=r"\p{So}")
_PREFIX_MARK = rf"\.\.+|…|\+|US\$|C\$|A\$|{PREFIX}"
_SUFFIX_MARK = rf"\.\.+|…|['’][sS]|{SUFFIX}"
_MARK = r"\.\.+|…|['’][sS]|US\$|C\$|A\$|."  # one token of a run of marks
_UNITS = (
    "km|km²|km³|m|m²|m³|dm|dm²|dm³|cm|cm²|cm³|mm|mm²|mm³|ha|µm|nm|yd|in|ft|kg|g|mg|µg|t|lb|oz|m/s|km/h|"
    "kmh|mph|hPa|Pa|mbar|mb|MB|kb|KB|gb|GB|tb|TB|T|G|M|K|%"
)
_AFTER_NUMBER = rf"{_UNITS}|US\$|C\$|A\$|{char_class(_CURRENCY)}|\+"
# Letters of scripts without case (CJK, kana, hangul, Arabic, Hebrew, Indic...), which spaCy counts as both
# lower and upper case.
_UNCASED = (
    r"\x{1200}-\x{137f}\x{980}-\x{9ff}\x{591}-\x{5f4}\x{fb1d}-\x{fb4f}\x{620}-\x{64a}\x{66e}-\x{6d5}"
    r"\x{6e5}-\x{6ff}"
    r"\x{750}-\x{77f}\x{8a0}-\x{8bd}\x{fb50}-\x{fbb1}\x{fbd3}-\x{fd3d}\x{fd50}-\x{fdc7}\x{fdf0}-\x{fdfb}"
    r"\x{fe70}-\x{fefc}\x{1ee00}-\x{1eebb}\x{d80}-\x{dff}\x{900}-\x{97f}\x{c80}-\x{cff}\x{b80}-\x{bff}\x{c00}-\x{c7f}"
    r"\x{ac00}-\x{d7af}\x{1100}-\x{11ff}\x{3040}-\x{30ff}\x{4e00}-\x{9fff}\x{3400}-\x{4dbf}\x{20000}-\x{2a6df}"
    r"\x{2a700}-\x{2ebef}\x{2e80}-\x{2fdf}\x{2ff0}-\x{303f}\x{31c0}-\x{31ef}\x{3200}-\x{33ff}\x{f900}-\x{faff}"
    r"\x{fe30}-\x{fe4f}\x{1f200}-\x{1f2ff}\x{2f800}-\x{2fa1f}"
)
_LOWER = rf"\p{{Ll}}{_UNCASED}"
_UPPER = rf"\p{{Lu}}{_UNCASED}"
# spaCy splits a final period only after these characters ("|" by a quirk of how it builds the class), or
# after two capitals ("NASA.").
_SPLITS_PERIOD = char_class("%²-+|" + _PUNCT + _QUOTES, extra=rf"0-9{_LOWER}")
# Abbreviations spaCy keeps whole although a lowercase letter precedes the period.
ABBREVIATIONS = (
    "Mr. Mrs. Ms. Dr. Prof. St. Mt. Jr. Gen. Gov. Sen. Rep. Rev. Adm. Messrs. Inc. Ltd. Co. co. Corp. Bros. vs. "
    "v.s. e.g. i.e. E.g. I.e. a.m. p.m. Ph.D. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. Ala. "
    "Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Md. Mass. Mich. Minn. Miss. "
    "Mo. Mont. Neb. Nebr. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis. Ak."
).split() + [letter + "." for letter in "abcdefghijklmnopqrstuvwxyzäöü"]
# They keep their period when peeled, and so do times such as "3a.m." (split into 3 and a.m. later).
_ABBREVIATION = "^(?:" + "|".join(map(re.escape, ABBREVIATIONS)) + r"|(?:1[0-2]|[1-9])[ap]\.m\.)$"

def _lower_and_title(words: str) -> list[str]:
    """spaCy's special cases exist in lower and title case only ("don't", "Don't", not "DON'T")."""
    return [variant for word in words.split() for variant in (word, word[0].upper() + word[1:])]


_NOT_STEMS = (
    "ai are ca could dare did does do had has have is may might must need ought sha should was were wo would"
)
_PRONOUNS = "i you he she it we they that there these those this what when where who why how"
# Contractions with an apostrophe, and times, as (word)(clitic).
_CONTRACTION = (
    rf"^(?:({'|'.join(_lower_and_title(_NOT_STEMS))})(n['’]t)|"
    rf"({'|'.join(_lower_and_title(_PRONOUNS))})(['’](?:m|re|ve|ll|d))|"
    rf"({'|'.join(_lower_and_title('could would should might must may need ought do does did had not'))})(['’]ve)|"
    r"([Yy]['’])(all)|(1[0-2]|[1-9])([ap]\.m\.))$"
)
_CONTRACTION_PYTHON = re.compile(_CONTRACTION)
# The few contractions spaCy also splits without an apostrophe ("dont", "cannot", "im" - not "its" or "well").
_BARE_CLITICS = {
    "nt": _NOT_STEMS, "ve": "i you they we there these those how what when where who why could might must should "
    "would not", "d": "i you they he it we that there these those this how what when where who why",
    "ll": "you they it that there these those this how what when where who why", "re": "you they there these those "
    "how what when where why", "s": "he she that there this how what when where who why", "m": "i", "not": "can",
    "na": "gon", "ta": "got", "all": "y",
}
BARE_CONTRACTIONS = {
    variant + clitic: f"{variant} {clitic}"
    for clitic, words in _BARE_CLITICS.items() for variant in _lower_and_title(words)
} | {f"{hour}{half}": f"{hour} {half}" for hour in range(1, 13) for half in ("am", "pm")}

_MAYBE_URL = r"[\pL\pN]\.[\pL\pN]|@|://"
_URL = (
    r"^(?:[\pL\pN_+.-][\pL\pN_+.-]+://)?(?:[^ @]+@)?(?:[A-Za-z0-9\x{a1}-\x{ffff}][A-Za-z0-9\x{a1}-\x{ffff}_-]*\.)+"
    rf"[{_LOWER}][{_LOWER}]+(?::[0-9]+)?(?:[/?#].*)?$"
)
_INFIXES = [
    (r"(\.\.+|…|\p{So})", r" \1 "),
    (r"([0-9])([+\-*^])([0-9-])", r"\1 \2 \3"),
    (rf"([{_LOWER}{_QUOTES}])\.([{_UPPER}{_QUOTES}])", r"\1 . \2"),
    (r"(\pL),(\pL)", r"\1 , \2"),
    (r"([\pL0-9])(---|--|——|-|–|—|~)(\pL)", r"\1 \2 \3"),
    (r"([\pL0-9])([:<>=/])(\pL)", r"\1 \2 \3"),
]
# spaCy's special cases that the rules above would split: joined back when their parts are adjacent
# (spaCy finds them among the tokens of a chunk after splitting it), like the abbreviations.
SPECIAL_CASES = frozenset(
    "'' 's 'S 'd 'll 're 've 'm 'em 'cause 'cos 'coz 'cuz 'bout 'nuff and/or w/o \\\") ): (: :) :( :* :] [: :> :/ "
    ":| :} :o :x :p :D :P :O :X :0 :1 :3 :-) :-( :-] :-/ :-* :-| :-} :-> :-P :-D :-O :-X :-o :-p :-x :-0 :-3 "
    ":(( :)) :((( :))) :() :o) ;) ;-) ;D ;-D ;_; =) =( =/ =] =[ =| =D =3 ]= [= (= (; (-: )-: (-; [-: (-8 8) 8-) "
    "8-D <3 </3 <33 <333 >:( >:o ^_^ ^__^ ^___^ -_- -__- @_@ ¯\\(ツ)/¯ (>_<) (^_^) (*_*) (-_-) (¬_¬) (ಠ_ಠ)".split()
)


def _matches(values: pa.Array, pattern: str) -> pa.Array:
    return pc.match_substring_regex(values, pattern)


def _concat(*values: pa.Array, separator: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*values, pa.scalar(separator, values[0].type))


def _strings(value: str, like: pa.Array) -> pa.Array:
    return pa.array([value] * len(like), like.type)


def _where(mask: pa.Array, values: pa.Array, update: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`update` applied to the values where `mask` holds, the others unchanged."""
    if not pc.any(mask).as_py():
        return values
    return pc.replace_with_mask(values, mask, update(values.filter(mask)))


def _spaced(marks: pa.Array) -> pa.Array:
    """A run of marks as tokens, each followed by a space."""
    return pc.replace_substring_regex(marks, f"({_MARK})", r"\1 ")


def _split_off(values: pa.Array, pattern: str) -> tuple[pa.Array, pa.Array]:
    """(first, second) named groups of `pattern`, which every value matches."""
    parts = pc.extract_regex(values, pattern)
    return pc.struct_field(parts, [0]), pc.struct_field(parts, [1])


def _peel_where(mask: pa.Array, cores: pa.Array, tails: pa.Array, peel) -> tuple[pa.Array, pa.Array]:
    """Where `mask` holds, `peel(cores, tails)` moves marks from the end of the core to the front of the tail."""
    if not pc.any(mask).as_py():
        return cores, tails
    peeled_cores, peeled_tails = peel(cores.filter(mask), tails.filter(mask))
    return pc.replace_with_mask(cores, mask, peeled_cores), pc.replace_with_mask(tails, mask, peeled_tails)


def _peel_run(cores: pa.Array, tails: pa.Array) -> tuple[pa.Array, pa.Array]:
    cores, run = _split_off(cores, rf"^(?P<rest>.*?)(?P<run>(?:{_SUFFIX_MARK})*)$")
    return cores, _concat(_spaced(run), tails)


def _peel_period(cores: pa.Array, tails: pa.Array) -> tuple[pa.Array, pa.Array]:
    return pc.utf8_slice_codeunits(cores, 0, -1), _concat(_strings(". ", tails), tails)


def _peel_after_number(cores: pa.Array, tails: pa.Array) -> tuple[pa.Array, pa.Array]:
    cores, unit = _split_off(cores, rf"^(?P<rest>.*[0-9])(?P<unit>{_AFTER_NUMBER})$")
    return cores, _concat(unit, tails, separator=" ")


def _peel_suffixes(cores: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Peel suffix marks off the end of each core until none is left; returns (cores, peeled tokens)."""
    tails = _strings("", cores)
    active = np.arange(len(cores))
    while active.size:
        core, tail = cores.take(active), tails.take(active)
        before = pc.utf8_length(core)
        core, tail = _peel_where(_matches(core, rf"(?:{_SUFFIX_MARK})$"), core, tail, _peel_run)
        splits_period = pc.and_not(_matches(core, rf"(?:{_SPLITS_PERIOD}|[{_UPPER}][{_UPPER}])\.$"),
                                   _matches(core, _ABBREVIATION))
        core, tail = _peel_where(splits_period, core, tail, _peel_period)
        core, tail = _peel_where(_matches(core, rf"[0-9](?:{_AFTER_NUMBER})$"), core, tail, _peel_after_number)
        mask = np.zeros(len(cores), dtype=bool)
        mask[active] = True
        cores = pc.replace_with_mask(cores, pa.array(mask), core)
        tails = pc.replace_with_mask(tails, pa.array(mask), tail)
        active = active[to_numpy(pc.not_equal(pc.utf8_length(core), before))]
    return cores, tails


def _split_contraction(cores: pa.Array) -> pa.Array:
    """'don't' -> do n't, "I'm" -> I 'm: few, so split in Python."""
    return pa.array([" ".join(_CONTRACTION_PYTHON.match(core).groups("")).strip() for core in cores.to_pylist()],
                    cores.type)


@functools.cache
def _special_case_pattern() -> tuple[re.Pattern, str, dict[str, str]]:
    """The special cases the rules split, as a pattern over their pieces (Python, RE2) and pieces -> case."""
    specials = sorted(SPECIAL_CASES)
    split = _rewrite_chunks(pa.array(specials, pa.large_string()), join_specials=False).to_pylist()
    pieces = {" ".join(value.split()): special for special, value in zip(specials, split) if value.split() != [special]}
    # An abbreviation split from its period by an infix or a contraction ("a=b." -> a = b .) is joined back too.
    pieces |= {f"{abbreviation[:-1]} .": abbreviation for abbreviation in ABBREVIATIONS}
    alternatives = "|".join(" +".join(map(re.escape, key.split())) for key in sorted(pieces, key=len, reverse=True))
    return re.compile(f"(?<![^ ])(?:{alternatives})(?![^ ])"), f"(?:^| )(?:{alternatives})(?: |$)", pieces


def _join_special_cases(chunks: pa.Array) -> pa.Array:
    pattern, re2_pattern, pieces = _special_case_pattern()

    def join(found: pa.Array) -> pa.Array:
        return pa.array([pattern.sub(lambda match: pieces[" ".join(match.group().split())], chunk)
                         for chunk in found.to_pylist()], found.type)

    return _where(_matches(chunks, re2_pattern), chunks, join)


def _split_infixes(cores: pa.Array) -> pa.Array:
    for pattern, replacement in _INFIXES:
        found = _matches(cores, pattern)
        if pc.any(found).as_py():
            # Twice, for overlapping contexts such as "x-y-z".
            once = pc.replace_substring_regex(cores.filter(found), pattern, replacement)
            cores = pc.replace_with_mask(cores, found, pc.replace_substring_regex(once, pattern, replacement))
    return cores


def _rewrite_chunks(chunks: pa.Array, join_specials: bool = True) -> pa.Array:
    """Insert a space wherever spaCy would split each chunk."""
    chunks = pc.replace_substring_regex(chunks, r"°([FfCcKk])\.", r"°\1 .")  # spaCy's "°C." rule
    heads, cores = _strings("", chunks), chunks
    starts_with_mark = _matches(chunks, f"^(?:{_PREFIX_MARK})")
    if pc.any(starts_with_mark).as_py():
        head, core = _split_off(chunks.filter(starts_with_mark), rf"^(?P<head>(?:{_PREFIX_MARK})*)(?P<rest>.*)$")
        # spaCy takes "+" as a prefix only when no digit follows.
        plus_digit = pc.and_(_matches(head, r"\+$"), _matches(core, "^[0-9]"))
        head = pc.if_else(plus_digit, pc.utf8_slice_codeunits(head, 0, -1), head)
        core = pc.if_else(plus_digit, _concat(_strings("+", core), core), core)
        heads = pc.replace_with_mask(heads, starts_with_mark, _spaced(head))
        cores = pc.replace_with_mask(cores, starts_with_mark, core)
    cores, tails = _peel_suffixes(cores)
    cores = _where(_matches(cores, _CONTRACTION), cores, _split_contraction)
    cores = _where(pc.is_in(cores, pa.array(sorted(BARE_CONTRACTIONS), cores.type)), cores,
                   lambda bare: pa.array([BARE_CONTRACTIONS[word] for word in bare.to_pylist()], bare.type))
    # Infixes only split what is left of a chunk that still has a mark inside and is no URL or abbreviation.
    inside = pc.and_not(pc.invert(pc.utf8_is_alnum(cores)), _matches(cores, _ABBREVIATION))
    maybe_url = pc.and_(inside, _matches(cores, _MAYBE_URL))
    if pc.any(maybe_url).as_py():
        inside = pc.and_not(inside, pc.and_(maybe_url, _matches(cores, _URL)))
    cores = _where(inside, cores, _split_infixes)
    chunks = _concat(heads, cores, tails, separator=" ")
    return _join_special_cases(chunks) if join_specials else chunks


def _needs_rules(chunks: pa.Array) -> np.ndarray:
    """Chunks that are not a single word as they stand: a mark inside, a contraction, or "10km"."""
    alphanumeric = pc.utf8_is_alnum(chunks)
    contraction = pc.is_in(chunks, pa.array(sorted(BARE_CONTRACTIONS), chunks.type))
    needs = to_numpy(pc.or_(pc.invert(alphanumeric), contraction))
    with_number = to_numpy(pc.and_not(alphanumeric, pc.utf8_is_alpha(chunks)))
    if with_number.any():
        needs[with_number] |= to_numpy(_matches(chunks.filter(pa.array(with_number)), rf"[0-9](?:{_UNITS})$"))
    return needs


def split_words(texts: pa.Array) -> Pieces:
    """Words of every text, as datatrove's spaCy tokenizer would split them (whitespace never a word)."""
    texts = _texts(texts)
    chunks = _pieces(whitespace_words(texts), len(texts))
    nonempty = to_numpy(pc.not_equal(chunks.values, ""))
    needs_rules = _needs_rules(chunks.values) & nonempty
    if not needs_rules.any():
        return Pieces(chunks.values.filter(pa.array(nonempty)), chunks.rows[nonempty], chunks.num_rows)
    # Chunks repeat ("the," "it's"): rewrite each distinct one once, then gather every word in order.
    distinct = pc.dictionary_encode(chunks.values.filter(pa.array(needs_rules)))
    split = pc.split_pattern(_rewrite_chunks(distinct.dictionary), " ")
    parts = pc.list_flatten(split)
    kept_parts = to_numpy(pc.not_equal(parts, ""))
    parts_per_distinct = np.bincount(pc.list_parent_indices(split).to_numpy()[kept_parts],
                                     minlength=len(distinct.dictionary))
    first_part = np.cumsum(parts_per_distinct) - parts_per_distinct
    which = distinct.indices.to_numpy().astype(np.int64)
    words_per_chunk = nonempty.astype(np.int64)
    words_per_chunk[needs_rules] = parts_per_distinct[which]
    position = np.cumsum(words_per_chunk) - words_per_chunk  # of each chunk's first word
    source = np.empty(words_per_chunk.sum(), dtype=np.int64)
    plain = nonempty & ~needs_rules
    source[position[plain]] = np.flatnonzero(plain)
    counts = parts_per_distinct[which]
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    source[np.repeat(position[needs_rules], counts) + offset] = (
        len(chunks.values) + np.repeat(first_part[which], counts) + offset
    )
    pool = pa.concat_arrays([chunks.values, parts.filter(pa.array(kept_parts))])
    return Pieces(pool.take(pa.array(source)), np.repeat(chunks.rows, words_per_chunk), chunks.num_rows)


# ---------------------------------------------------------------------------------------------------
# Repetition: equal lines, paragraphs and word n-grams within a text, found with hashing over the batch.


def group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each key: an id shared by equal keys, and how often its key occurs; and the first index of each id."""
    _, first, ids, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    return ids.reshape(-1), counts[ids.reshape(-1)], first


def repeated(pieces: Pieces) -> np.ndarray:
    """Whether each piece equals an earlier piece of the same row (datatrove's `find_duplicates`)."""
    is_repeat = np.ones(len(pieces.rows), dtype=bool)
    if len(pieces.rows):
        values = pc.dictionary_encode(pieces.values).indices.to_numpy().astype(np.int64)
        _, _, first = group(pieces.rows * (values.max() + 1) + values)
        is_repeat[first] = False
    return is_repeat


@dataclass(frozen=True)
class NGrams:
    """The word n-grams of a batch that occur more than once in their row (no other can repeat or be its most
    frequent): where each window starts, an id equal for equal n-grams of a row, and the n-gram's count."""

    n: int
    starts: np.ndarray
    ids: np.ndarray
    counts: np.ndarray
    rows: np.ndarray


def window_lengths(words: Pieces, starts: np.ndarray, n: int, separator: int) -> np.ndarray:
    """Characters in the n words from each start, joined by `separator` characters."""
    cumulative = words.cumulative_lengths
    return cumulative[starts + n] - cumulative[starts] + separator * (n - 1)


def iter_ngrams(words: Pieces, sizes: Sequence[int]) -> Iterator[NGrams]:
    """The repeated n-grams of every size in `sizes`, ascending. An n-gram can only repeat where its first n-1
    words do, so each size only looks at the windows that repeated one word shorter."""
    tokens = pc.dictionary_encode(words.values).indices.to_numpy().astype(np.int64)
    vocabulary = tokens.max(initial=0) + 1
    words_left = np.cumsum(words.count())[words.rows] - np.arange(len(tokens))
    starts = np.arange(len(tokens))
    ids, counts, _ = group(words.rows * vocabulary + tokens)
    for n in range(1, max(sizes, default=0) + 1):
        if n > 1:
            fits = words_left[starts] >= n
            starts = starts[fits]
            ids, counts, _ = group(ids[fits] * vocabulary + tokens[starts + n - 1])
        again = counts > 1
        starts, ids, counts = starts[again], ids[again], counts[again]
        if n in sizes:
            yield NGrams(n, starts, ids, counts, words.rows[starts])


def top_ngram_characters(ngrams: NGrams, words: Pieces) -> np.ndarray:
    """Per row, count x length (words joined by spaces) of its most frequent n-gram; on a tie, the one that
    appears first, as `Counter.most_common(1)` picks it. Where nothing repeats, that is the first n-gram."""
    word_counts = words.count()
    top = np.zeros(words.num_rows)
    fits = word_counts >= ngrams.n
    top[fits] = window_lengths(words, (np.cumsum(word_counts) - word_counts)[fits], ngrams.n, separator=1)
    if len(ngrams.ids):
        _, _, first = group(ngrams.ids)
        first = np.sort(first)  # each repeated n-gram at its first appearance, in order
        rows, counts = ngrams.rows[first], ngrams.counts[first]
        most = np.zeros(words.num_rows, dtype=np.int64)
        np.maximum.at(most, rows, counts)
        candidates = np.flatnonzero(counts == most[rows])
        chosen = first[candidates[np.r_[True, rows[candidates][1:] != rows[candidates][:-1]]]]
        top[ngrams.rows[chosen]] = ngrams.counts[chosen] * window_lengths(words, ngrams.starts[chosen], ngrams.n, 1)
    return top


def duplicated_ngram_characters(ngrams: NGrams, words: Pieces, rows_wanted: np.ndarray) -> np.ndarray:
    """Per row, characters in repeated n-grams as datatrove's `find_all_duplicate` counts them: scanning the
    words in order, a window seen before counts (its words joined without spaces) and the scan jumps past it.
    Windows whose n-gram occurs once never count nor matter, so only the repeated ones are scanned."""
    repeated_characters = np.zeros(words.num_rows)
    candidates = np.flatnonzero(rows_wanted[ngrams.rows])
    if not candidates.size:
        return repeated_characters
    rows = ngrams.rows[candidates]
    starts, ids = ngrams.starts[candidates].tolist(), ngrams.ids[candidates].tolist()
    lengths = window_lengths(words, ngrams.starts[candidates], ngrams.n, separator=0).tolist()
    row_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    for begin, end in zip(row_starts.tolist(), [*row_starts[1:].tolist(), len(candidates)]):
        seen, resume_at, total = set(), -1, 0
        for start, key, length in zip(starts[begin:end], ids[begin:end], lengths[begin:end]):
            if start < resume_at:
                continue
            if key in seen:
                total += length
                resume_at = start + ngrams.n
            else:
                seen.add(key)
        repeated_characters[rows[begin]] = total
    return repeated_characters


# ---------------------------------------------------------------------------------------------------
# Sentences, languages, stop words and verdicts.

_SENTENCE_END = "^" + char_class("".join(TERMINAL_PUNCTUATION)) + "$"


# Whitespace other than one space between two words is a token of its own for spaCy, and counts as a word
# when it finds sentences: a stand-in word marks it.
_WHITESPACE_TOKEN = f"{char_class(WHITESPACE)}{{2,}}|{char_class(WHITESPACE.replace(' ', ''))}"


def count_sentences(texts: pa.Array) -> np.ndarray:
    """Sentences per text as spaCy's sentencizer finds them: one, plus one for each word (not punctuation)
    preceded by a sentence-final mark since the previous such word."""
    words = split_words(pc.replace_substring_regex(_texts(texts), _WHITESPACE_TOKEN, " \ufdd0 "))
    ends = words.matches(_SENTENCE_END)
    plain = np.flatnonzero(~words.matches(r"^\pP+$") & ~ends)
    ends_before = np.concatenate([[0], np.cumsum(ends)])  # sentence ends before each word position
    row_first = np.cumsum(words.count()) - words.count()
    rows = words.rows[plain]
    previous = np.r_[-1, plain[:-1]]
    previous = np.where(np.r_[False, rows[1:] == rows[:-1]], previous, row_first[rows] - 1)
    boundary = ends_before[plain] > ends_before[previous + 1]
    return (words.count() > 0) + np.bincount(rows[boundary], minlength=words.num_rows)


def language_codes(batch: pa.RecordBatch | pa.Table, default: str) -> pa.Array:
    """Each row's ISO 639-1 language ('en' from 'en', 'EN', 'en-US' or 'en_Latn'); `default` where unknown."""
    if "lang" not in batch.schema.names:
        return pa.array([default] * batch.num_rows, pa.string())
    codes = pc.utf8_lower(pc.replace_substring_regex(batch.column("lang").cast(pa.string()), r"[-_].*$", ""))
    codes = pc.fill_null(codes, "")
    return pc.if_else(pc.equal(codes, ""), default, codes)


def is_spaced(languages: pa.Array) -> np.ndarray:
    return ~to_numpy(pc.is_in(languages, pa.array(sorted(UNSPACED_LANGUAGES))))


def distinct_stop_words(words: Pieces, languages: pa.Array, stop_words: dict[str, frozenset[str]]) -> np.ndarray:
    """Distinct stop words of its language in each row's words (matched case-sensitively, as Gopher does)."""
    found = np.zeros(words.num_rows, dtype=np.int64)
    word_languages = pc.take(languages, pa.array(words.rows))
    for language in pc.unique(languages).to_pylist():
        vocabulary = pa.array(sorted(stop_words.get(language, ())), pa.string())
        if not len(vocabulary):
            continue
        position = pc.index_in(words.values, value_set=vocabulary)
        hit = to_numpy(pc.and_(pc.is_valid(position), pc.equal(word_languages, language)))
        if hit.any():
            pairs = words.rows[hit] * len(vocabulary) + to_numpy(pc.fill_null(position, 0)).astype(np.int64)[hit]
            found += np.bincount(np.unique(pairs) // len(vocabulary), minlength=words.num_rows)
    return found


def _number(value: float) -> str:
    """12 -> '12', 0.123456 -> '0.1235'."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


class Verdicts:
    """The first failing rule of each row, in the order the rules are checked, with what was measured."""

    def __init__(self, filter_name: str, num_rows: int):
        self.filter_name = filter_name
        self.rule = np.full(num_rows, -1, dtype=np.int64)
        self.names: list[str] = []
        self.details = np.full(num_rows, None, dtype=object)

    @property
    def undecided(self) -> np.ndarray:
        return self.rule < 0

    def check(self, rule: str, measure: str, values: np.ndarray, comparison: str, threshold: float | None,
              applies: np.ndarray | bool = True) -> None:
        """Reject the undecided rows (where the rule `applies`) whose measure is beyond `threshold`, with reason
        'filter:rule' and detail 'measure=value > threshold'; a threshold of None disables the rule."""
        if threshold is None:
            return
        beyond = values > threshold if comparison == ">" else values < threshold
        newly = beyond & applies & self.undecided
        if not newly.any():
            return
        self.rule[newly] = len(self.names)
        self.names.append(f"{self.filter_name}:{rule}")
        self.details[newly] = [
            f"{measure}={_number(value)} {comparison} {_number(threshold)}" for value in values[newly].tolist()
        ]

    def reject(self, rule: str, rows: np.ndarray, details: list[str]) -> None:
        """Reject the given undecided rows (indices) with ready-made details."""
        if not len(rows):
            return
        self.rule[rows] = len(self.names)
        self.names.append(f"{self.filter_name}:{rule}")
        self.details[rows] = details

    def reasons(self) -> tuple[pa.Array, pa.Array]:
        names = pa.array([*self.names, None], pa.string())
        reasons = names.take(pa.array(np.where(self.undecided, len(self.names), self.rule)))
        return reasons, pa.array(self.details, pa.string())
