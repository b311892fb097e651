"""Keep/drop agreement and speed of Gristmill's heuristic filters against datatrove's on the same texts.

Needs `pip install datatrove spacy` (datatrove tokenizes English with spaCy); uses gensim's bundled English
texts too when gensim is installed. Run: python benchmarks/parity_datatrove.py [--speed-docs N] [--rounds R] [--seed S]
"""

from __future__ import annotations

import argparse
import bz2
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
from rounds import run_rounds, summarise

from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.filters.c4_filter import C4Filter
from gristmill.stages.filters.fineweb_filter import FineWebFilter
from gristmill.stages.filters.gopher_quality import GopherQuality
from gristmill.stages.filters.gopher_repetition import GopherRepetition

try:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
except ImportError:
    sys.exit("this benchmark compares with datatrove: pip install datatrove spacy")

FILTERS = {
    "gopher_quality": (GopherQuality, GopherQualityFilter),
    "gopher_repetition": (GopherRepetition, GopherRepetitionFilter),
    "c4_filter": (C4Filter, C4QualityFilter),
    "fineweb_filter": (FineWebFilter, FineWebQualityFilter),
}

# datatrove's rejection reasons under Gristmill's rule names.
DATATROVE_REASONS = {
    "gopher_short_doc": "gopher_quality:min_doc_words", "gopher_long_doc": "gopher_quality:max_doc_words",
    "gopher_below_avg_threshold": "gopher_quality:min_avg_word_length",
    "gopher_above_avg_threshold": "gopher_quality:max_avg_word_length",
    "gopher_too_many_hashes": "gopher_quality:max_hash_word_ratio",
    "gopher_too_many_ellipsis": "gopher_quality:max_ellipsis_word_ratio",
    "gopher_too_many_bullets": "gopher_quality:max_bullet_lines_ratio",
    "gopher_too_many_end_ellipsis": "gopher_quality:max_ellipsis_lines_ratio",
    "gopher_below_alpha_threshold": "gopher_quality:min_alpha_words_ratio",
    "gopher_enough_stop_words": "gopher_quality:min_stop_words",
    "empty": "gopher_repetition:empty",
    **{f"dup_{unit}_{kind}": f"gopher_repetition:dup_{unit}_{kind}" for unit in ("para", "line")
       for kind in ("frac", "char_frac")},
    **{f"top_{n}_gram": f"gopher_repetition:top_{n}_gram_char_frac" for n in range(2, 5)},
    **{f"duplicated_{n}_n_grams": f"gopher_repetition:dup_{n}_gram_char_frac" for n in range(5, 11)},
    "lorem_ipsum": "c4:lorem_ipsum", "curly_bracket": "c4:curly_bracket", "too_few_sentences": "c4:min_num_sentences",
    "line_punct_ratio": "fineweb:min_line_punct_ratio", "short_line_ratio": "fineweb:max_short_line_ratio",
    "char_dup_ratio": "fineweb:max_char_dup_ratio", "list_ratio": "fineweb:max_new_line_ratio",
}


def same_reason(name: str, theirs: str, ours: str) -> bool:
    """Whether datatrove's reason names the same rule as Gristmill's ("empty" exists in two filters)."""
    if theirs == "empty" and name == "fineweb_filter":
        return ours == "fineweb:empty"
    return DATATROVE_REASONS.get(theirs) == ours


@dataclass
class Corpus:
    texts: list[str]
    sources: list[str]

    def add(self, source: str, texts: list[str]) -> None:
        self.texts.extend(texts)
        self.sources.extend([source] * len(texts))


def paragraphs(text: str) -> list[str]:
    return [paragraph.strip("\n") for paragraph in re.split(r"\n\s*\n", text) if paragraph.strip()]


def group_paragraphs(sections: list[list[str]], rng: random.Random, largest: int) -> list[str]:
    """Consecutive paragraphs of each section joined into documents of 1 to `largest` paragraphs."""
    documents = []
    for section in sections:
        start = 0
        while start < len(section):
            size = rng.randint(1, largest)
            documents.append("\n\n".join(section[start:start + size]))
            start += size
    return documents


def pydoc_sections() -> list[list[str]]:
    from pydoc_data.topics import topics

    return [paragraphs(text) for _, text in sorted(topics.items())]


def gensim_sections() -> dict[str, list[list[str]]]:
    """Real English from gensim's test data, when gensim is installed: news paragraphs and Wikipedia pages."""
    try:
        import gensim
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError:
        return {}
    data = Path(gensim.__file__).parent / "test" / "test_data"
    news = (data / "lee_background.cor").read_text(encoding="latin-1").splitlines()
    pages = []
    with bz2.open(data / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2") as dump:
        for _, markup, _ in extract_pages(dump):
            # filter_wiki leaves bold and italic quotes, which an HTML extractor would not.
            page = re.sub(r"'''?", "", filter_wiki(markup))
            if len(page) > 500:
                pages.append(paragraphs(page))
    return {"lee": [[line] for line in news if line.strip()], "enwiki": pages}


PROSE_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can out up what about "
    "into them time some could these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both "
    "life being under never day same another know while last might us great old year off come since against go "
    "came right used take three river mill grain flour water market village winter harvest bread farmer road"
).split()
BOILERPLATE = [
    "Home | About | Contact | Blog", "Skip to main content", "Log in", "Sign up for our newsletter",
    "This website uses cookies to improve your experience.", "By using this site you agree to our use of cookies.",
    "Read our Privacy Policy.", "Terms of Use", "Please enable JavaScript to view the comments.",
    "Copyright 2024 All rights reserved.", "Share this:", "Facebook", "Twitter", "Related posts", "Read more...",
    "Click here to subscribe!", "Posted by admin", "Tags: news, events", "Previous | Next", "Menu", "Search",
    "Accept all cookies", "Javascript is disabled in your browser.", "Loading...", "Back to top",
]
# Tokens whose splitting depends on spaCy's rules: contractions, abbreviations, numbers, URLs, quotes, emoticons.
WEB_TOKENS = (
    "don't it's U.S. e.g. $19.99 50% 10km well-known (see below) \"quoted\" https://example.com/page?id=3 "
    "info@example.com — … :) #1 Mr. Smith's 3.5 1,000 café naïve Müller I'm we'll can't O'Brien rock'n'roll "
    "NASA. etc. i.e., A. x-y-z and/or 9am +44 ok.Then [1] 'single' ‘curly’ «guillemets» 2-3 C++ ...and"
).split()
# Odd characters and spacing real pages carry: other scripts, emoji, symbols, markup debris, odd whitespace.
ODD_TOKENS = [
    "\r\n", "\t", "\xa0", "\u200b", "\u2028", "  ", "\n \n", "😀", "👍🏽", "→", "★", "©", "°", "½", "„", "‚", "―", "‐",
    "!!", "?!", "...?", ".\"", "`", "´", "§", "¶", "•", "·", "##", "@", "&amp;", "<br>", "{", "}", "[", "]", "/", "\\",
    "|", "~", "^", "**", "_", "=", "+", "€", "5$", "3.", "1.000", "2nd", "5kg", "12pm", "1am", "3a.m.", "U.K.",
    "No.", "St.", "Jan.", "z.", "'s", "n't", "won't", "I'll", "you'd", "they're", "let's", "y'all", "dont", "cant",
    "id", "im", "hes", "cannot", "gonna", "www.example.org", "file.txt", "v1.2.3", "@user", "Zürich", "Ελλάδα",
    "Москва", "東京", "日本語の文", "한국어", "עברית", "العربية", "हिन्दी", "ไทย", "a:b", "a=b", "a,b", "1-2", "2*3",
]
SPAM = "buy cheap best price discount free shipping sale offer deal online shop viagra casino win now".split()


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(PROSE_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!", "?", "..."])


def generated(rng: random.Random, prose: list[str], count: int) -> list[str]:
    """Documents built to sit on either side of the thresholds: prose mixed with junk in varying doses."""
    documents = []
    kinds = "mixed short repetitive spam list hashtags ellipsis lorem code sentences web odd".split()
    for index in range(count):
        kind = kinds[index % len(kinds)]
        body = [rng.choice(prose) for _ in range(rng.randint(1, 4))]
        if kind == "mixed":
            lines = [line for paragraph in body for line in paragraph.split("\n")]
            for _ in range(rng.randint(0, 12)):
                lines.insert(rng.randint(0, len(lines)), rng.choice(BOILERPLATE))
            documents.append("\n".join(lines))
        elif kind == "short":
            documents.append(" ".join(sentence(rng, rng.randint(3, 12)) for _ in range(rng.randint(1, 8))))
        elif kind == "repetitive":
            repeated = rng.choice(body)
            parts = body + [repeated] * rng.randint(1, 5) + [sentence(rng, 8)] * rng.randint(0, 6)
            rng.shuffle(parts)
            documents.append(("\n\n" if rng.random() < 0.5 else "\n").join(parts))
        elif kind == "spam":
            words = [rng.choice(SPAM + PROSE_WORDS[:30]) for _ in range(rng.randint(30, 400))]
            documents.append(" ".join(words) + ".")
        elif kind == "list":
            bullet = rng.choice(["- ", "• ", "* ", "", "1. "])
            items = [bullet + sentence(rng, rng.randint(1, 9)).rstrip(".!?") for _ in range(rng.randint(3, 40))]
            documents.append("\n".join(items + body[: rng.randint(0, 2)]))
        elif kind == "hashtags":
            words = [rng.choice(PROSE_WORDS) for _ in range(rng.randint(40, 200))]
            for _ in range(rng.randint(0, len(words) // 5)):
                words.insert(rng.randint(0, len(words)), "#" + rng.choice(SPAM))
            documents.append(" ".join(words) + ".")
        elif kind == "ellipsis":
            lines = [sentence(rng, rng.randint(4, 15)) for _ in range(rng.randint(3, 20))]
            documents.append("\n".join(line[:-1] + "..." if rng.random() < 0.4 else line for line in lines))
        elif kind == "lorem":
            lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."
            documents.append("\n".join(body + [lorem] if rng.random() < 0.5 else [lorem.replace(".", "")] + body))
        elif kind == "code":
            code = "def handler(event) {\n    return {'status': 200};\n}"
            documents.append("\n\n".join(body + [code]))
        elif kind == "sentences":
            documents.append("\n".join(sentence(rng, rng.randint(3, 14)) for _ in range(rng.randint(2, 9))))
        elif kind == "odd":
            pieces = []
            for _ in range(rng.randint(10, 150)):
                draw = rng.random()
                pieces.append(rng.choice(ODD_TOKENS if draw < 0.2 else WEB_TOKENS if draw < 0.3 else PROSE_WORDS))
                pieces.append(rng.choice([" ", " ", " ", "", "\n", ". ", ", ", "\n\n"]))
            documents.append("".join(pieces))
        else:  # web
            lines = []
            for _ in range(rng.randint(1, 8)):
                length = rng.randint(4, 16)
                words = [rng.choice(WEB_TOKENS if rng.random() < 0.3 else PROSE_WORDS) for _ in range(length)]
                lines.append(" ".join(words) + rng.choice([".", "!", "", "...", "?"]))
            documents.append("\n".join(lines))
    return documents


def build_corpus(seed: int) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus([], [])
    pydoc = pydoc_sections()
    corpus.add("pydoc-paragraph", [paragraph for section in pydoc for paragraph in section])
    for largest in (4, 8, 16):
        corpus.add("pydoc-section", group_paragraphs(pydoc, rng, largest))
    prose = [paragraph for section in pydoc for paragraph in section if len(paragraph) > 200]
    for source, sections in gensim_sections().items():
        corpus.add(source, group_paragraphs(sections, rng, 6) if source == "enwiki" else [s[0] for s in sections])
        prose += [paragraph for section in sections for paragraph in section if len(paragraph) > 200]
    corpus.add("generated", generated(rng, prose, 2400))
    return corpus


def datatrove_verdicts(filter_class, texts: list[str]) -> tuple[list[str | None], list[str]]:
    """datatrove's reason (None = kept) and output text for each text."""
    datatrove_filter = filter_class()
    reasons, outputs = [], []
    for index, text in enumerate(texts):
        document = Document(text=text, id=str(index))
        verdict = datatrove_filter.filter(document)
        kept = verdict is True or (isinstance(verdict, tuple) and verdict[0])
        reasons.append(None if kept else (verdict[1] if isinstance(verdict, tuple) else "rejected"))
        outputs.append(document.text)
    return reasons, outputs


def gristmill_verdicts(stage_class, texts: list[str]) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Gristmill's rejections (id -> reason, detail) and kept texts by id."""
    stage = stage_class(stage_class.Config())
    batch = pa.RecordBatch.from_pylist([{"id": str(i), "text": text} for i, text in enumerate(texts)],
                                       schema=DOCUMENT_SCHEMA)
    result = stage.process(batch)
    rejected = result.rejected.to_pydict()
    reasons = {i: (reason, detail) for i, reason, detail in zip(rejected["id"], rejected["reason"], rejected["detail"])}
    kept = dict(zip(result.kept.column("id").to_pylist(), result.kept.column("text").to_pylist()))
    return reasons, kept


def compare(name: str, corpus: Corpus) -> float:
    stage_class, filter_class = FILTERS[name]
    theirs, their_texts = datatrove_verdicts(filter_class, corpus.texts)
    ours, our_texts = gristmill_verdicts(stage_class, corpus.texts)
    disagreements = [index for index, reason in enumerate(theirs) if (reason is None) != (str(index) not in ours)]
    agreement = 1 - len(disagreements) / len(corpus.texts)
    print(f"\n## {name}: {agreement:.2%} keep/drop agreement on {len(corpus.texts)} documents "
          f"({len(disagreements)} disagreements); datatrove drops {sum(r is not None for r in theirs)}, "
          f"Gristmill drops {len(ours)}")
    both = [index for index, reason in enumerate(theirs) if reason is not None and str(index) in ours]
    same = sum(same_reason(name, theirs[index], ours[str(index)][0]) for index in both)
    print(f"   same rule named for {same} of {len(both)} documents both drop")
    print("   Gristmill reasons:", dict(Counter(reason for reason, _ in ours.values()).most_common()))
    for index in disagreements:
        our_reason, detail = ours.get(str(index), ("kept", ""))
        preview = corpus.texts[index][:90].replace("\n", "\\n")
        print(f"   doc {index} [{corpus.sources[index]}] datatrove: {theirs[index] or 'kept'} | "
              f"Gristmill: {our_reason} {detail} | {preview!r}")
    if name == "c4_filter":
        both_kept = [index for index, reason in enumerate(theirs) if reason is None and str(index) in our_texts]
        different = [index for index in both_kept if their_texts[index] != our_texts[str(index)]]
        print(f"   output text identical for {len(both_kept) - len(different)} of {len(both_kept)} documents both kept")
        for index in different:
            print(f"   doc {index}: datatrove {their_texts[index][:80]!r} | Gristmill {our_texts[str(index)][:80]!r}")
    return agreement


def two_kilobyte_documents(corpus: Corpus, count: int) -> list[str]:
    """Real prose of the corpus (not the generated documents) cut into ~2 KB documents."""
    documents, current = [], ""
    for text, source in zip(corpus.texts, corpus.sources):
        if source in ("generated", "pydoc-section"):
            continue
        for paragraph in paragraphs(text):
            current += paragraph + "\n\n"
            if len(current) >= 2000:
                documents.append(current.strip())
                current = ""
    return documents[:count]


def measure_speed(corpus: Corpus, count: int, rounds: int) -> dict:
    """Both filters of each pair on the same documents, from the texts to verdicts inside the timer (each side
    builds its own input: a record batch or datatrove Documents), in alternating rounds on one core."""
    pa.set_cpu_count(1)
    documents = two_kilobyte_documents(corpus, count)
    mean_size = sum(map(len, documents)) / len(documents)
    datatrove_verdicts(GopherQualityFilter, documents[:5])  # loads spaCy, outside the timing
    summaries = {}
    for name, (stage_class, filter_class) in FILTERS.items():
        results = run_rounds({"gristmill": partial(gristmill_verdicts, stage_class, documents),
                              "datatrove": partial(datatrove_verdicts, filter_class, documents)},
                             rounds, label=f"{name} ")
        summaries[name] = summarise(results, len(documents), "gristmill")
    print(f"\n## Speed on {len(documents)} documents of {mean_size:.0f} characters for both, one core, "
          f"medians of {rounds} alternating rounds (docs per CPU second; speed-up = median per-round ratio)")
    print("| filter | Gristmill | datatrove | speed-up (range) |\n|---|---|---|---|")
    for name, summary in summaries.items():
        rates, speedup = summary["rates"], summary["speedups"]["datatrove"]
        low, high = speedup["cpu_range"]
        print(f"| {name} | {rates['gristmill']['cpu_median']:,.0f} | {rates['datatrove']['cpu_median']:,.0f} | "
              f"{speedup['cpu_median']:.1f}x ({low:.1f}–{high:.1f}) |")
    return {"documents": len(documents), "mean_characters": mean_size, "filters": summaries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", nargs="+", choices=list(FILTERS), default=list(FILTERS), help="filters to compare")
    parser.add_argument("--seed", type=int, default=0, help="seed for grouping paragraphs and generated documents")
    parser.add_argument("--speed-only", action="store_true", help="only time the filters")
    parser.add_argument("--speed-docs", type=int, default=800, help="~2 KB documents both sides filter (0: skip)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating speed rounds; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the speed rounds' summary here")
    args = parser.parse_args()
    corpus = build_corpus(args.seed)
    if not args.speed_only:
        print(f"# Parity with datatrove on {len(corpus.texts)} documents: {dict(Counter(corpus.sources))}")
        agreements = {name: compare(name, corpus) for name in args.filters}
        print("\n## Summary\n| filter | agreement |\n|---|---|")
        for name, agreement in agreements.items():
            print(f"| {name} | {agreement:.2%} |")
    if args.speed_docs:
        speed = measure_speed(corpus, args.speed_docs, args.rounds)
        if args.json:
            args.json.write_text(json.dumps(speed, indent=2) + "\n")


if __name__ == "__main__":
    main()
