"""Deterministic generator of a small Common-Crawl-like WARC sample plus truth labels (pages.jsonl).

Gives every later Gristmill stage (extraction, language ID, filters, PII, dedup, classifier) real work offline.
"""
from __future__ import annotations

import argparse
import functools
import html
import json
import random
import re
import textwrap
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from fractions import Fraction
from io import BytesIO
from pathlib import Path

from pydoc_data.topics import topics as PYDOC_TOPICS
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

SOURCE = "gristmill-sample"
# Share of `pages` per kind (largest-remainder rounding); the last three are not 200 + HTML.
KIND_WEIGHTS = {
    "prose": 0.45, "multilingual": 0.12, "exact_duplicate": 0.08, "near_duplicate": 0.08,
    "spam": 0.08, "low_quality": 0.06, "code": 0.05, "math": 0.04, "pii": 0.04,
    "not_found": 0.0075, "redirect": 0.0075, "binary": 0.005,
}
SKIPPED_KINDS = ("not_found", "redirect", "binary")
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://gristmill.invalid/sample")

# Everyday sentences per language (our own writing), split into SENTENCES at terminal punctuation.
SENTENCE_BANKS = {
    "de": """
Am Wochenende gehen wir oft auf den Markt, um frisches Obst und Gemüse zu kaufen. Der Zug nach München hatte
heute Morgen wieder zwanzig Minuten Verspätung. Meine Großmutter backt jeden Sonntag einen Apfelkuchen nach
einem alten Familienrezept. Im Sommer fahren viele Familien an die Ostsee, um am Strand zu entspannen. Die
Stadtbibliothek hat ihre Öffnungszeiten verlängert und ist jetzt auch samstags geöffnet. Wer regelmäßig mit dem
Fahrrad zur Arbeit fährt, bleibt fit und spart dabei Geld. Nach dem langen Winter freuen sich alle auf die
ersten warmen Frühlingstage. Unser Nachbar hat im Garten Tomaten, Zucchini und verschiedene Kräuter angepflanzt.
Das neue Café in der Altstadt serviert hervorragenden Kaffee und hausgemachte Torten. Am Abend haben wir
zusammen gekocht und danach einen alten Film angesehen. Die Kinder spielen nach der Schule gern Fußball auf dem
Sportplatz hinter dem Haus. Für eine Wanderung in den Alpen sollte man feste Schuhe und genug Wasser mitnehmen.
In vielen Städten gibt es inzwischen Carsharing-Angebote, die man bequem per App buchen kann. Ich lese abends
gern noch ein paar Seiten in einem guten Buch, bevor ich schlafen gehe. Der Wetterdienst hat für morgen starken
Regen und einzelne Gewitter angekündigt. Beim Umzug in die neue Wohnung haben uns viele Freunde geholfen. Auf
dem Weihnachtsmarkt riecht es nach Glühwein, gebrannten Mandeln und Lebkuchen. Die Museen der Stadt bieten am
ersten Sonntag im Monat freien Eintritt an. Es lohnt sich, Lebensmittel möglichst saisonal und aus der Region
einzukaufen. Nach der Arbeit trifft sie sich oft mit einer Kollegin zu einem Spaziergang im Park.
""",
    "fr": """
Le samedi matin, nous allons au marché pour acheter des légumes frais et du fromage. La boulangerie au coin de
la rue vend le meilleur pain de tout le quartier. Pendant les vacances d'été, beaucoup de familles partent au
bord de la mer. Mon frère apprend à jouer de la guitare depuis quelques mois. Il a plu toute la journée, alors
nous sommes restés à la maison pour lire. Le musée municipal propose une nouvelle exposition consacrée aux
peintres de la région. Pour aller au travail, elle prend son vélo lorsque le temps le permet. Nous avons préparé
un gâteau au chocolat pour l'anniversaire de notre voisine. Les enfants jouent dans le parc pendant que leurs
parents discutent sur un banc. Le train pour Lyon est parti avec un quart d'heure de retard. En automne, les
forêts se couvrent de feuilles rouges et dorées. Ce petit restaurant sert une cuisine simple et délicieuse à des
prix raisonnables. La bibliothèque du quartier organise des ateliers de lecture pour les enfants le mercredi.
Après le dîner, nous aimons faire une promenade le long de la rivière. Il faut penser à arroser les plantes du
balcon quand il fait très chaud. Mes grands-parents habitent dans un petit village entouré de champs et de
vignes. Le week-end prochain, nous irons faire une randonnée dans les montagnes. Elle a enfin trouvé un
appartement plus proche de son bureau. Le café de la place est toujours plein le dimanche matin. Apprendre une
nouvelle langue demande de la patience et beaucoup de pratique.
""",
    "es": """
Los domingos solemos comer en casa de mis abuelos con toda la familia. El mercado del barrio abre muy temprano y
tiene fruta fresca todos los días. Este verano queremos viajar a la costa para descansar unos días junto al mar.
Mi hermana trabaja en un hospital y a menudo tiene turnos de noche. Por la tarde salimos a pasear por el parque
con el perro. La biblioteca municipal ofrece cursos gratuitos de informática para personas mayores. Hoy hace
mucho calor, así que es mejor quedarse a la sombra. Nuestro vecino cultiva tomates, pimientos y lechugas en su
pequeño huerto. El autobús número doce pasa cada quince minutos por la plaza mayor. Para la cena preparamos una
tortilla de patatas y una ensalada. Los niños aprenden a nadar en la piscina del polideportivo. En otoño las
calles se llenan de hojas secas y el aire se vuelve más fresco. Me gusta leer el periódico mientras tomo un café
por la mañana. La nueva panadería de la esquina vende un pan integral buenísimo. Durante las fiestas del pueblo
hay música, bailes y fuegos artificiales. Ella decidió aprender a tocar el piano cuando cumplió cuarenta años.
Si vas a la montaña, no olvides llevar agua y ropa de abrigo. El tren de alta velocidad tarda menos de tres
horas en llegar a Barcelona. Mis amigos y yo jugamos al fútbol todos los jueves después del trabajo. Cocinar con
productos de temporada es más sano y también más barato.
""",
    "bg": """
През уикенда често ходим на пазара, за да купим пресни плодове и зеленчуци. Баба ми прави най-вкусната баница,
която съм опитвал. През лятото много семейства почиват на морето край Варна и Бургас. Влакът за Пловдив закъсня
с половин час заради ремонт на линията. Децата играят футбол в двора на училището след часовете. Вечерта
приготвихме шопска салата и печени чушки за гостите. Градската библиотека организира срещи с автори всеки
четвъртък. Когато времето е хубаво, отивам на работа с колело. В планината въздухът е чист, а гледките са
невероятни. Съседът ни отглежда домати, краставици и подправки в градината си. През есента горите се обагрят в
жълто, червено и кафяво. Новото кафене в центъра предлага домашни сладкиши и хубаво кафе. Сестра ми учи испански
език, защото иска да живее в Мадрид. В неделя сутрин обичам да чета книга на балкона. Автобусът спира пред нашия
блок на всеки десет минути. За разходката до хижата са нужни удобни обувки и достатъчно вода. Музеят предлага
безплатен вход за ученици и студенти. Дядо ми разказва интересни истории за детството си на село. Зимата тази
година беше мека и почти нямаше сняг. Готвенето с местни продукти е здравословно и не е скъпо.
""",
    "zh": """
周末我们常常去菜市场买新鲜的水果和蔬菜。今天早上地铁特别拥挤，我差点儿迟到了。
我奶奶每年春节都会包很多饺子给全家人吃。这家小饭馆的面条又便宜又好吃，每天中午都有很多人排队。
下雨天我喜欢待在家里看书喝茶。孩子们放学以后在公园里踢足球。夏天的时候，很多家庭会去海边度假。
图书馆周末也开放，很多学生在那里复习功课。我的邻居在阳台上种了番茄、辣椒和一些花。
他每天骑自行车上班，既锻炼身体又节省时间。秋天的山上到处都是红色和黄色的树叶。
晚饭以后，我们一家人常常一起出去散步。这个城市的公共交通很方便，坐公交车可以到大部分地方。
我妹妹正在学弹钢琴，每天练习一个小时。天气预报说明天会降温，记得多穿一件衣服。
新开的咖啡店环境很安静，适合和朋友聊天。爬山的时候一定要带够水，还要穿舒服的鞋子。
我们打算国庆节的时候回老家看望父母。早上喝一杯热牛奶，再吃一个鸡蛋，是很多人的习惯。
学习一门新的语言需要耐心和坚持。
""",
    "ja": """
週末はよく近所の市場で新鮮な野菜や果物を買います。
今朝は電車がとても混んでいて、座ることができませんでした。
祖母は毎年お正月においしいおせち料理を作ってくれます。
雨の日は家でコーヒーを飲みながら本を読むのが好きです。
子どもたちは放課後、公園でサッカーをして遊んでいます。夏休みには家族で海に行く予定です。
駅の近くに新しいパン屋ができて、毎朝行列ができています。図書館は日曜日も開いているので、とても便利です。
私は毎日自転車で会社に通っています。秋になると、山の木々が赤や黄色に色づきます。
夕食の後、家族で近くの川沿いを散歩しました。妹は最近ピアノを習い始めて、毎日練習しています。
天気予報によると、明日は一日中雨が降るそうです。この町のバスは本数が多くて、どこへ行くにも便利です。
山に登るときは、水と雨具を忘れずに持っていきましょう。隣の人がベランダでトマトとハーブを育てています。
友達と駅前の喫茶店で久しぶりにゆっくり話しました。冬は温かい鍋料理を家族みんなで囲むのが楽しみです。
新しい言葉を覚えるには、毎日少しずつ続けることが大切です。来月、両親に会いに故郷へ帰るつもりです。
""",
}
SENTENCES = {lang: [" ".join(s.split()) for s in re.split(r"(?<=[.!?。])\s*", bank) if s.strip()]
             for lang, bank in SENTENCE_BANKS.items()}
LANG_DOMAINS = {"de": "de.example-wiki.de", "fr": "fr.exemple-journal.fr", "es": "es.ejemplo-noticias.es",
                "bg": "bg.primer-novini.bg", "zh": "zh.example-news.cn", "ja": "ja.example-blog.jp"}

# domain -> (site name, boilerplate style index into STYLES)
SITES = {
    "example-news.com": ("Example News", 0), "blog.example.org": ("The Example Blog", 1),
    "techdocs.example.net": ("TechDocs", 2), "forum.example-community.com": ("Example Community", 3),
    "wiki.example.edu": ("Example Wiki", 2), "mirror.example-archive.net": ("Archive Mirror", 0),
    "content-farm.example.biz": ("Top Articles Daily", 1), "shop.example-deals.biz": ("Mega Deals", 3),
    "learn.example-math.org": ("Learn Math Online", 1), "code.example-dev.io": ("DevNotes", 2),
    "de.example-wiki.de": ("Beispiel-Wiki", 2), "fr.exemple-journal.fr": ("Le Journal Exemple", 0),
    "es.ejemplo-noticias.es": ("Noticias Ejemplo", 0), "bg.primer-novini.bg": ("Примерни новини", 3),
    "zh.example-news.cn": ("示例新闻网", 0), "ja.example-blog.jp": ("サンプルブログ", 1),
}
_PROSE_SITES = ("example-news.com", "blog.example.org", "techdocs.example.net",
                "forum.example-community.com", "wiki.example.edu")
KIND_SITES = {
    "prose": _PROSE_SITES, "pii": _PROSE_SITES[:4], "low_quality": _PROSE_SITES + ("content-farm.example.biz",),
    "exact_duplicate": _PROSE_SITES + ("mirror.example-archive.net", "content-farm.example.biz"),
    "spam": ("shop.example-deals.biz", "content-farm.example.biz"),
    "code": ("code.example-dev.io", "techdocs.example.net"),
    "math": ("learn.example-math.org", "wiki.example.edu", "blog.example.org"),
}
KIND_SITES["near_duplicate"] = KIND_SITES["exact_duplicate"]
# Boilerplate styles: (nav labels, content wrapper open/close, sidebar open/close, cookie banner on top?).
STYLES = (
    (("Home", "World", "Business", "Technology", "Science", "Contact"), '<main id="content"><article class="story">',
     "</article></main>", '<aside class="sidebar"><h3>Most read</h3>', "</aside>", True),
    (("Home", "Archive", "Tags", "About me", "Newsletter"), '<div class="container"><main><div class="entry">',
     "</div></main></div>", '<div id="sidebar" class="widget-area"><h3>Recent posts</h3>', "</div>", False),
    (("Docs", "Tutorials", "API reference", "Community", "Download"), '<div class="doc-wrapper"><article role="main">',
     "</article></div>", '<div class="toc"><h3>See also</h3>', "</div>", True),
    (("Forums", "Latest", "Top", "Members", "Search", "Log in"), '<div id="main"><main class="thread">',
     "</main></div>", '<aside id="related"><h3>Related topics</h3>', "</aside>", False),
)
COOKIE = ('<div class="cookie-banner" id="cookie-consent"><p>We use cookies to improve your experience and to '
          'analyse traffic. By continuing to browse this site you agree to our use of cookies.</p>'
          '<button type="button">Accept all</button> <a href="/privacy">Manage settings</a></div>')

FILLER = ("also", "really", "often", "usually", "simply", "actually", "generally", "quite", "new", "several",
          "important", "basically", "typically", "certain", "still", "just", "indeed", "always")
PRODUCTS = ("watches", "sneakers", "phone cases", "sunglasses", "vitamins", "handbags", "headphones",
            "car insurance", "casino bonus", "weight loss pills")
SPAM_LINES = (
    "Buy cheap %(p)s online, cheap %(p)s, best %(p)s, discount %(p)s, %(p)s sale, %(p)s deals",
    "BUY CHEAP %(P)s NOW!!! BEST PRICE GUARANTEED!!!",
    "Click here to buy %(p)s at the lowest price! Click here! Click here now!",
    "FREE SHIPPING ON ALL %(P)s ORDERS - LIMITED TIME OFFER",
    "Best %(p)s cheap %(p)s buy %(p)s online cheap %(p)s free shipping %(p)s",
    "cheap %(p)s cheap %(p)s cheap %(p)s cheap %(p)s cheap %(p)s",
    "Top %(p)s 2024 best %(p)s review best %(p)s price best %(p)s shop",
    "100%% ORIGINAL %(P)s!!! ORDER NOW AND SAVE 90%%!!! CLICK HERE",
)
NAV_WORDS = ("Home", "About us", "Products", "Services", "Blog", "Careers", "Contact", "FAQ", "Sitemap",
             "Login", "Register", "Shop", "Gallery", "Events", "Support", "Downloads", "Press", "Partners")
TEASERS = ("10 tips for better sleep...", "Why you should drink more water...", "The best gadgets of the year",
           "Read more", "You won't believe what happened next...", "Top 5 travel destinations",
           "How to save money fast...", "Latest updates", "Click to see more", "Celebrity news of the week...")
STUBS = ("Coming soon", "This page is under construction. Please check back later.", "Loading...",
         "Please enable JavaScript to view this website.", "JavaScript is required", "Page 1 of 1")
LOREM = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
         "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla").split()
FIRST_NAMES = ("Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keiko")
LAST_NAMES = ("Miller", "Schmidt", "Garcia", "Nguyen", "Kowalski", "Rossi", "Tanaka", "Okafor", "Larsen")
MAIL_DOMAINS = ("example.com", "mail.example.org", "example.net", "corp.example.co.uk")
PII_SENTENCES = (
    "If you have questions about this article, write to %(email)s or call %(phone)s.",
    "Thanks to %(name)s (%(email)s) for reporting the problem; the test server at %(ip)s has since been patched.",
    "For support, contact %(name)s at %(phone)s or by email at %(email)s.",
    "Our staging machine %(ip)s logs every request, and the weekly report is mailed to %(email)s.",
    "You can reach the maintainer, %(name)s, at %(email)s; urgent issues can be phoned in to %(phone)s.",
)
# Each theorem: (title, paragraph %-templates filled by _math_page).
THEOREMS = (
    ("The Pythagorean theorem", (
        "In a right triangle with legs $a$ and $b$ and hypotenuse $c$, the Pythagorean theorem states that "
        "$a^2 + b^2 = c^2$. It is one of the oldest results in geometry.",
        "For example, if $a = %(a)d$ and $b = %(b)d$, then $c = \\sqrt{%(a2)d + %(b2)d} = \\sqrt{%(c2)d} = %(c)d$.")),
    ("The sum of the first n integers", (
        "A classic result attributed to Gauss says that $$\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}.$$",
        "To see why, write the sum forwards and backwards and add the two rows: each of the $n$ columns "
        "sums to $n+1$, so twice the sum equals $n(n+1)$. For $n = %(n)d$ we get "
        "$\\frac{%(n)d \\cdot %(n1)d}{2} = %(s)d$.")),
    ("Solving quadratic equations", (
        "Every quadratic equation $ax^2 + bx + c = 0$ with $a \\neq 0$ has the solutions "
        "$$x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}.$$ The quantity $\\Delta = b^2 - 4ac$ is the discriminant.",
        "Consider $x^2 %(B)+d x %(C)+d = 0$. Here $\\Delta = %(D)d > 0$, so there are two real roots, "
        "and the formula gives $x_1 = %(r1)d$ and $x_2 = %(r2)d$.")),
    ("The geometric series", (
        "For a real number $r$ with $|r| < 1$ the geometric series converges: "
        "$$\\sum_{k=0}^{\\infty} r^k = \\frac{1}{1-r}.$$",
        "Multiplying the partial sum $S_n = 1 + r + \\dots + r^n$ by $r$ and subtracting gives "
        "$S_n(1-r) = 1 - r^{n+1}$. With $r = \\frac{1}{%(q)d}$ the series sums to $\\frac{%(q)d}{%(q1)d}$.")),
    ("The power rule", (
        "The power rule of calculus states that $\\frac{d}{dx} x^n = n x^{n-1}$ for every positive integer $n$; "
        "it follows from the binomial expansion $(x+h)^n = x^n + n x^{n-1} h + O(h^2)$.",
        "For instance, the derivative of $f(x) = %(p)d x^{%(e)d}$ is $f'(x) = %(pe)d x^{%(e1)d}$.")),
)

_UNDERLINE = re.compile(r"^([*=\-^~+])\1{2,}$")
_NOT_PROSE = re.compile(r"(Note|See also|Added in|Changed in|Deprecated|Footnotes)\b")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}(\w[^*]*?\w|\w)\*{1,2}(?![\w*])")
_FOOTNOTE = re.compile(r" ?\[\d+\]")


@dataclass(frozen=True)
class SampleSummary:
    """Paths and counts of one generated sample."""

    warc_path: Path
    jsonl_path: Path
    pages: int
    records: int
    kinds: dict[str, int]


def _is_python(code: str) -> bool:
    try:
        return code.startswith(">>>") or compile(code, "<sample>", "exec") is not None
    except (SyntaxError, ValueError):
        return False


def _code_block(chunks: list[str], i: int) -> tuple[str | None, int]:
    """Longest run of indented chunks from i (at most 6) that is Python code, and the index after it."""
    j = i
    while j < len(chunks) and j - i < 6 and chunks[j].startswith(" "):
        j += 1
    for end in range(j, i, -1):
        code = textwrap.dedent("\n\n".join(chunks[i:end])).rstrip()
        if "::=" not in code and len(code.splitlines()) >= 2 and _is_python(code):
            return code, end
    return None, i


@functools.lru_cache(maxsize=1)
def _pydoc_corpus() -> tuple[tuple, tuple]:
    """Prose paragraphs of the stdlib's pydoc topics grouped per topic as (heading, text) tuples, and
    (heading, intro, code) examples where an intro ending in ':' precedes a block of Python code."""
    groups, examples, seen = [], [], set()
    for key in sorted(PYDOC_TOPICS):
        chunks = [c.strip("\n") for c in re.split(r"\n[ \t]*\n", PYDOC_TOPICS[key]) if c.strip()]
        heading, intro, group, i = key, None, [], 0
        while i < len(chunks):
            lines = chunks[i].splitlines()
            if len(lines) >= 2 and _UNDERLINE.match(lines[1].strip()):
                heading, intro, i = lines[0].strip(), None, i + 1
                continue
            code, end = _code_block(chunks, i) if chunks[i].startswith(" ") else (None, i)
            if code:
                if intro and code not in seen:
                    seen.add(code)
                    examples.append((heading, intro, code))
                intro, i = None, end
                continue
            text, intro, i = _FOOTNOTE.sub("", _EMPHASIS.sub(r"\1", " ".join(chunks[i].split()))), None, i + 1
            if (not 80 <= len(text) <= 1200 or not text[0].isupper() or text[-1] not in ".:" or text in seen
                    or _NOT_PROSE.match(text) or "::=" in text or ">>>" in text):
                continue
            seen.add(text)
            if text.endswith(":"):
                intro = text
            else:
                group.append((heading, text))
        if group:
            groups.append(tuple(group))
    return tuple(groups), tuple(examples)


def _plan(pages: int, rng: random.Random) -> list[str]:
    """Kinds in page order: largest-remainder counts, shuffled, with a prose page first."""
    total = sum(KIND_WEIGHTS.values())
    share = {k: pages * w / total for k, w in KIND_WEIGHTS.items()}
    counts = {k: int(v) for k, v in share.items()}
    by_remainder = sorted(KIND_WEIGHTS, key=lambda k: counts[k] - share[k])
    for k in by_remainder[: pages - sum(counts.values())]:
        counts[k] += 1
    kinds = [k for k in KIND_WEIGHTS for _ in range(counts[k])]
    rng.shuffle(kinds)
    if "prose" not in kinds:
        return ["prose" if k.endswith("duplicate") else k for k in kinds]
    first = kinds.index("prose")
    kinds[0], kinds[first] = kinds[first], kinds[0]
    return kinds


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Lower-cased whitespace-token n-grams, as used for the near-duplicate target."""
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def _near_duplicate(paragraphs: list[str], rng: random.Random) -> list[str]:
    """Edit a few words (runs of 1-2) until word-5-gram Jaccard with the original falls to ~0.72-0.86.

    An edit that would overshoot the target by more than 0.08 is retried elsewhere, so short pages stay >= ~0.64.
    """
    original, target = _shingles("\n\n".join(paragraphs)), rng.uniform(0.72, 0.86)
    words = [p.split(" ") for p in paragraphs]
    for _ in range(10_000):
        i = rng.randrange(len(words))
        w = list(words[i])
        j, op = rng.randrange(1, max(2, len(w) - 2)), rng.random()
        if op < 0.5:
            w[j:j + 2] = rng.sample(FILLER, 2)
        elif op < 0.8 or len(w) < 10:
            w.insert(j, rng.choice(FILLER))
        else:
            del w[j:j + rng.randint(1, 2)]
        trial = words[:i] + [w] + words[i + 1:]
        current = _shingles("\n\n".join(" ".join(x) for x in trial))
        similarity = len(original & current) / len(original | current)
        if similarity >= target - 0.08:
            words = trial
            if similarity <= target:
                break
    return [" ".join(w) for w in words]


def _math_page(rng: random.Random) -> tuple[str, list]:
    """Two theorem explanations with worked numbers plus random exercises, in LaTeX-style math."""
    k, n, q, p, e = rng.randint(1, 9), rng.randint(5, 99), rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    r1, r2 = rng.sample(range(-9, 10), 2)
    v = {"a": 3 * k, "b": 4 * k, "c": 5 * k, "a2": 9 * k * k, "b2": 16 * k * k, "c2": 25 * k * k,
         "n": n, "n1": n + 1, "s": n * (n + 1) // 2, "B": -(r1 + r2), "C": r1 * r2, "D": (r1 - r2) ** 2,
         "r1": r1, "r2": r2, "q": q, "q1": q - 1, "p": p, "e": e, "pe": p * e, "e1": e - 1}
    chosen = rng.sample(THEOREMS, 2)
    blocks = [("p", par % v) for _, pars in chosen for par in pars]
    exercises = []
    for _ in range(rng.randint(2, 4)):
        a, b, c, d = (rng.randint(1, 12) for _ in range(4))
        s = Fraction(a, b + 1) + Fraction(c, d + 1)
        exercises.append(rng.choice((
            f"Compute $\\frac{{{a}}}{{{b + 1}}} + \\frac{{{c}}}{{{d + 1}}}"
            f" = \\frac{{{s.numerator}}}{{{s.denominator}}}$.",
            f"Solve $ {a}x + {b} = {a * c + b} $, which gives $x = {c}$.",
            f"Check that ${a + d}^2 - {d}^2 = {a} \\cdot {a + 2 * d} = {a * (a + 2 * d)}$.")))
    blocks.append(("p", "Exercises for practice: " + " ".join(exercises)))
    return f"{chosen[0][0]} and {chosen[1][0].lower()}", blocks


def _pii_sentence(rng: random.Random) -> str:
    """A sentence carrying a made-up name, email address, phone number and/or IPv4 address."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    phone = rng.choice((f"+1 ({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}",
                        f"+49 30 {rng.randint(1000000, 9999999)}", f"+44 20 7946 {rng.randint(0, 9999):04d}"))
    ip = rng.choice((f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}", f"203.0.113.{rng.randint(1, 254)}",
                     f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"))
    email = f"{first}.{last}@{rng.choice(MAIL_DOMAINS)}".lower()
    return rng.choice(PII_SENTENCES) % {"name": f"{first} {last}", "email": email, "phone": phone, "ip": ip}


def _low_quality(rng: random.Random) -> tuple[str, str, list]:
    """(title, lang, blocks) for one of several thin-content page shapes."""
    shape = rng.choice(("stub", "links", "teasers", "lorem"))
    if shape == "stub":
        return "Welcome", "en", [("p", s) for s in rng.sample(STUBS, rng.randint(1, 2))]
    if shape == "links":
        return "Site index", "en", [("ul", tuple(rng.sample(NAV_WORDS, rng.randint(6, 14))))]
    if shape == "teasers":
        return "Trending now", "en", [("ul", tuple(rng.sample(TEASERS, rng.randint(4, 8))))]
    pars = [" ".join(rng.choice(LOREM) for _ in range(rng.randint(25, 60))).capitalize() + "."
            for _ in range(rng.randint(1, 3))]
    return "Lorem ipsum", "la", [("p", p) for p in pars]


def _text(blocks: list) -> str:
    return "\n\n".join("\n".join(b) if tag == "ul" else b for tag, b in blocks)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "article"


def _block_html(tag: str, body) -> str:
    if tag == "ul":
        return "<ul>" + "".join(f'<li><a href="/{_slug(x)}">{html.escape(x)}</a></li>' for x in body) + "</ul>"
    if tag == "pre":
        return f'<pre><code class="language-python">{html.escape(body)}</code></pre>'
    return f"<p>{html.escape(body)}</p>"


def _render(domain: str, title: str, lang: str, blocks: list, links: list, year: int) -> str:
    """Full HTML document: head, nav, cookie banner, sidebar, main content and footer."""
    esc = html.escape
    name, style = SITES[domain]
    nav_labels, open_main, close_main, open_side, close_side, cookie_top = STYLES[style]
    nav = "".join(f'<li><a href="/{_slug(n)}">{esc(n)}</a></li>' for n in nav_labels)
    side = "".join(f'<li><a href="{esc(u)}">{esc(t)}</a></li>' for t, u in links)
    main = "\n".join(_block_html(tag, body) for tag, body in blocks)
    return "\n".join([
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">',
        f"<title>{esc(title)} | {esc(name)}</title>",
        f'<meta name="description" content="{esc(" ".join(_text(blocks).split())[:150])}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="stylesheet" href="/static/site.css">',
        "<style>body{font-family:sans-serif;margin:0}.cookie-banner{position:fixed;bottom:0;width:100%}</style>",
        "<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}"
        "gtag('js',new Date());gtag('config','G-EXAMPLE');</script>\n</head>\n<body>",
        COOKIE if cookie_top else "",
        f'<header><a class="logo" href="/">{esc(name)}</a><nav class="menu"><ul>{nav}</ul></nav></header>',
        f"{open_main}\n<h1>{esc(title)}</h1>\n{main}\n{close_main}",
        f"{open_side}<ul>{side}</ul><p>Subscribe to our newsletter for weekly updates.</p>{close_side}",
        f'<footer><p>&copy; {year} {esc(name)}. All rights reserved.</p><p><a href="/privacy">Privacy policy</a>'
        ' | <a href="/terms">Terms of use</a> | <a href="/contact">Contact</a></p></footer>',
        "" if cookie_top else COOKIE,
        "</body>\n</html>\n",
    ])


PDF = (b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n2 0 obj <</Type /Pages /Kids [3 0 R] "
       b"/Count 1>> endobj\n3 0 obj <</Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]>> endobj\n"
       b"trailer <</Root 1 0 R>>\n%%EOF\n")
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00\x00"
       b"\x00\x0cIDATx\xdac\xf8\xdf\xc0\x00\x00\x04\x01\x01\x80\xfb\xd7\xcb\xf1\x00\x00\x00\x00IEND\xaeB`\x82")


# Captures that ingest must skip: kind -> (status, Content-Type, body); "binary" alternates PDF and PNG.
SKIPPED = {
    "not_found": ("404 Not Found", "text/html; charset=utf-8", b"<html><head><title>404 Not Found</title></head>"
                  b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n"),
    "redirect": ("301 Moved Permanently", "text/html; charset=utf-8",
                 b"<html><body><p>Moved Permanently</p></body></html>\n"),
    "binary": ("200 OK", "application/pdf", PDF),
    "binary_png": ("200 OK", "image/png", PNG),
}


def _record_id(seed: int, index: int, kind: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(_NAMESPACE, f'{seed}/{index}/{kind}')}>"


def _write_capture(writer: WARCWriter, info_id: str, ids: list[str], url: str, when: datetime, status: str,
                   headers: list[tuple[str, str]], body: bytes, ip: str, fetch_ms: int) -> None:
    """Write the request, response and metadata records of one fetch, as Common Crawl lays them out."""
    req_id, resp_id, meta_id = ids
    date = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    host, path = url.split("/", 3)[2], "/" + url.split("/", 3)[3]
    common = {"WARC-Date": date, "WARC-Warcinfo-ID": info_id}
    request = StatusAndHeaders(f"GET {path} HTTP/1.1", [
        ("Host", host), ("User-Agent", "CCBot/2.0 (https://commoncrawl.org/faq/)"),
        ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("Accept-Language", "en-US,en;q=0.5"), ("Connection", "Keep-Alive")], is_http_request=True)
    writer.write_record(writer.create_warc_record(url, "request", http_headers=request, warc_headers_dict={
        "WARC-Record-ID": req_id, **common, "WARC-IP-Address": ip}))
    response = StatusAndHeaders(status, [("Date", format_datetime(when, usegmt=True)), ("Server", "nginx"),
                                         *headers, ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(
        url, "response", payload=BytesIO(body), length=len(body), http_headers=response, warc_headers_dict={
            "WARC-Record-ID": resp_id, **common, "WARC-Concurrent-To": req_id, "WARC-IP-Address": ip}))
    fields = f"fetchTimeMs: {fetch_ms}\r\n".encode()
    writer.write_record(writer.create_warc_record(
        url, "metadata", payload=BytesIO(fields), length=len(fields), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": meta_id, **common, "WARC-Concurrent-To": resp_id}))


class _Composer:
    """Per-run content state: shuffled prose pool, code examples, language rotation and prose originals."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        groups, examples = _pydoc_corpus()
        order = rng.sample(range(len(groups)), len(groups))
        self.paragraphs = [p for g in order for p in groups[g]]
        self.examples = rng.sample(examples, len(examples))
        self.langs = rng.sample(sorted(SENTENCES), len(SENTENCES))
        self.cursor, self.originals, self.counts = 0, [], {}

    def _take(self, n: int) -> list[tuple[str, str]]:
        """Next n pool paragraphs (wraps around, repeating text, only for very large samples)."""
        chosen = [self.paragraphs[(self.cursor + k) % len(self.paragraphs)] for k in range(n)]
        self.cursor += n
        return chosen

    def page(self, kind: str) -> dict:
        """Title, lang, blocks, duplicate_of and candidate domains for one 200 + HTML page."""
        rng, n = self.rng, self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        page = {"lang": "en", "duplicate_of": None, "sites": KIND_SITES.get(kind, _PROSE_SITES)}
        if kind in ("prose", "pii"):
            chosen = self._take(rng.randint(2, 4) if kind == "prose" else rng.randint(2, 3))
            texts = [t for _, t in chosen]
            if kind == "pii":
                texts = [t + " " + _pii_sentence(rng) for t in texts] + [_pii_sentence(rng)]
            page.update(title=chosen[0][0], blocks=[("p", t) for t in texts])
        elif kind.endswith("duplicate"):
            source = rng.choice(self.originals)
            blocks = source["blocks"]
            if kind == "near_duplicate":
                blocks = [("p", t) for t in _near_duplicate([t for _, t in blocks], rng)]
            page.update(title=source["title"], blocks=blocks, duplicate_of=source["id"],
                        sites=tuple(d for d in page["sites"] if d != source["domain"]))
        elif kind == "multilingual":
            lang = self.langs[n % len(self.langs)]
            sentences = rng.sample(SENTENCES[lang], rng.randint(5, 8))
            joiner = "" if lang in ("zh", "ja") else " "
            cuts = [0, *sorted(rng.sample(range(1, len(sentences)), rng.randint(1, 2))), len(sentences)]
            blocks = [("p", joiner.join(sentences[a:b])) for a, b in zip(cuts, cuts[1:])]
            page.update(lang=lang, title=sentences[0].rstrip(".。"), blocks=blocks, sites=(LANG_DOMAINS[lang],))
        elif kind == "spam":
            product = rng.choice(PRODUCTS)
            fill = {"p": product, "P": product.upper()}
            lines = [rng.choice(SPAM_LINES) % fill for _ in range(rng.randint(8, 16))]
            page.update(title=f"Cheap {product} online - best {product} deals", blocks=[("p", x) for x in lines])
        elif kind == "low_quality":
            title, lang, blocks = _low_quality(rng)
            page.update(title=title, lang=lang, blocks=blocks)
        elif kind == "code":
            title, intro, code = self.examples[n % len(self.examples)]
            page.update(title=title, blocks=[("p", intro), ("pre", code)])
        else:
            title, blocks = _math_page(rng)
            page.update(title=title, blocks=blocks)
        return page


def write_sample(output_dir: Path, pages: int = 400, seed: int = 0) -> SampleSummary:
    """Write sample.warc.gz and pages.jsonl (truth labels for the 200 + HTML pages) into output_dir.

    Output is byte-identical for the same (pages, seed) on the same Python (pydoc topics change between
    releases) and zlib build. Prose text stays distinct up to ~450 pages; beyond that the pool wraps around.
    """
    rng = random.Random(seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    warc_path, jsonl_path = output_dir / "sample.warc.gz", output_dir / "pages.jsonl"
    composer = _Composer(rng)
    kinds = _plan(pages, rng)
    when = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=seed % 366, seconds=rng.randrange(86400))
    site_links, rows, counts = {}, [], {}
    info_id = _record_id(seed, -1, "warcinfo")
    with open(warc_path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = f"software: {SOURCE}\r\nformat: WARC File Format 1.0\r\nisPartOf: {SOURCE}-seed{seed}\r\n".encode()
        writer.write_record(writer.create_warc_record(
            "", "warcinfo", payload=BytesIO(info), length=len(info), warc_content_type="application/warc-fields",
            warc_headers_dict={"WARC-Record-ID": info_id, "WARC-Date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "WARC-Filename": warc_path.name}))
        for index, kind in enumerate(kinds):
            when += timedelta(seconds=rng.randint(1, 90), milliseconds=rng.randrange(1000))
            counts[kind] = counts.get(kind, 0) + 1
            if kind in SKIPPED_KINDS:
                variant = "binary_png" if kind == "binary" and counts[kind] % 2 == 0 else kind
                status, content_type, body = SKIPPED[variant]
                domain = rng.choice(_PROSE_SITES)
                suffix = {"binary": ".pdf", "binary_png": ".png"}.get(variant, "")
                url = f"https://{domain}/files/{variant}-{index}{suffix}"
                headers = [("Content-Type", content_type)] + [("Location", url + "/moved")] * (kind == "redirect")
            else:
                page = composer.page(kind)
                domain = rng.choice(page["sites"])
                url = f"https://{domain}/{when.year}/{when.month:02d}/{_slug(page['title'])}-{index}"
                links = site_links.setdefault(domain, [])
                related = rng.sample(links, min(5, len(links)))
                body = _render(domain, page["title"], page["lang"], page["blocks"], related, when.year).encode()
                links.append((page["title"], url))
                status, headers = "200 OK", [("Content-Type", "text/html; charset=utf-8")]
                row = {"id": f"sample-{index:05d}", "url": url, "domain": domain, "source": SOURCE,
                       "fetch_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "lang": page["lang"], "kind": kind,
                       "title": page["title"], "duplicate_of": page["duplicate_of"], "text": _text(page["blocks"])}
                rows.append(row)
                if kind == "prose":
                    composer.originals.append({**row, "blocks": page["blocks"]})
            ip = f"198.51.100.{1 + sorted(SITES).index(domain)}"
            ids = [_record_id(seed, index, t) for t in ("request", "response", "metadata")]
            _write_capture(writer, info_id, ids, url, when, status, headers, body, ip, rng.randint(40, 2500))
    with open(jsonl_path, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return SampleSummary(warc_path, jsonl_path, pages, 1 + 3 * pages, dict(sorted(counts.items())))


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m gristmill.pipeline.demo.sample --output DIR [--pages N] [--seed S]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = write_sample(args.output, pages=args.pages, seed=args.seed)
    print(json.dumps({"warc": str(summary.warc_path), "jsonl": str(summary.jsonl_path), "pages": summary.pages,
                      "records": summary.records, "kinds": summary.kinds}))


if __name__ == "__main__":
    main()
