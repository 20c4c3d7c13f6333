"""Is a text English enough for the semantic layer's English embedder to judge?

The semantic layer embeds text with MiniLM (all-MiniLM-L6-v2), an English model. Text in
another language (Spanish, Japanese, ...) is split into many rare word pieces and lands in
a region of the embedding space it shares with the odd, multilingual in-the-wild jailbreak
samples of the attack corpus: "Hola, ¿cómo estás?" scored a margin of 0.149 and was blocked.
The embedder cannot tell a harmless Spanish question from an attack, so its verdict on such
text is not evidence; :func:`english_share` measures how much of a text the model can read
and :class:`~keel.firewall.semantic.SemanticLayer` then asks for a much larger margin (the
signature layer, which has multilingual override rules, still applies in full).

The test is cheap and needs no model: letters in non-Latin scripts (CJK, Cyrillic, Arabic,
...) count as foreign; among Latin words, common English function words count as English,
and function words of the big European languages, words with accented letters and Spanish
``¿``/``¡`` count as foreign. Words that are neither (names, code, numbers, content words)
count for neither side.
"""

from __future__ import annotations

import re
import unicodedata


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# English function words (no word that is also a common function word of es/fr/de/it/pt/nl)
_ENGLISH = _words("""
the of and to in is it that for you was with on as have be at this are from or by not but
what all were when we there can an your which their if will one about how up out them then
she many some so these would other into has more her two like him see time could no make
than first been its who now people my made over did down only way find use may long little
very after words called just where most know get through back much go good new write our
me man too any same tell does set three want well also show around form great put end why
again turn here off went old number must big even such because turned ask went men need
land different home us move try kind hand picture change play spell air away animal house
point page letter mother answer found study still learn should world high every near add
food between own below country plant last school father keep tree never start city earth
eye light thought head under story saw left few while along might close something seem
next hard open example begin life always those both paper together got group often run
important until children side feet car mile night walk white sea began grow took river
four carry state once book hear stop without second later miss idea enough eat face watch
far really almost let above girl sometimes young talk soon list song being leave family
it's i i'm i've i'd i'll you're don't doesn't can't won't isn't please help hello hi
thanks thank yes could would should shall am is are was were has had do does did having
he him his hers herself himself themselves myself yourself ourselves they them theirs
which whom whose whatever whoever anything everything nothing someone anyone everyone
each either neither although though unless since before after during against among
within without about above across behind beyond toward towards upon onto via
""")

# English words (or common abbreviations: OS, DOS, .com) among those function words
_NOT_FOREIGN = _words("son bin pour ton um op dank er mit con sin hay comment os dos nas com "
                      "heel")
# Function words of Spanish, French, German, Italian, Portuguese and Dutch that are not
# English words (so "die", "war", "also", "in", "a" are left out).
_FOREIGN = _words("""
el los las un una unos unas del al y o pero porque para por con sin sobre entre hasta
desde que qué cómo como cuál cuándo dónde quién es son está están estás estoy soy eres
fue muy más también ya mi mis tu tus su sus nuestro nuestra usted ustedes ella ellos yo
hola gracias puedes puede quiero tengo hay esto este esta eso ese esa aquí
le les des du et ou mais donc car pour avec dans sur sous chez est sont suis êtes sommes
je tu il elle nous vous ils elles mon ma mes ton ta tes son sa ses notre votre leur qui
quoi où comment pourquoi quand très aussi bonjour merci pouvez peux voudrais
der das und oder aber weil für mit ohne auf unter über bei zum zur ist sind bin bist
ich du er sie wir ihr mein meine dein deine sein seine unser euer nicht kein keine
wie was wo warum wann sehr auch hallo danke können kannst möchte bitte
il lo gli della delle dei degli nel nella con senza perché sono sei siamo io lui lei
noi voi loro mio mia tuo tua suo sua molto anche ciao grazie puoi vorrei
os um uma uns umas do da dos das em no na nos nas com sem porque é são estou sou você
vocês ele eles elas eu meu minha teu tua seu sua muito também olá obrigado podes pode
het een en maar omdat voor met zonder op onder bij ik jij hij zij wij jullie mijn jouw
zijn haar niet geen hoe waarom wanneer heel ook hallo dank kunt kun wil graag
de la ein eine einen einem kann habe haben
""") - _ENGLISH - _NOT_FOREIGN

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_INVERTED = re.compile(r"[¿¡]")
_OWN_LETTERS = frozenset("ßøæœłđ")
_CACHE_MAX = 4096
_cache: dict[str, float] = {}


def _latin(ch: str) -> bool:
    return ch.isascii() or unicodedata.name(ch, "").startswith("LATIN")


def _accented(word: str) -> bool:
    """Letters of written European languages: ASCII, or an ASCII letter with accents (and
    a few letters of their own: ß, ø, æ, œ, ł). Small capitals and other styled look-alikes
    ("ᴄʜᴀᴛʙᴏᴛ") are obfuscation, not a language."""
    return all(ch.isascii() or ch in _OWN_LETTERS
               or unicodedata.normalize("NFD", ch)[0].isascii() for ch in word)


def english_share(text: str) -> float:
    """Share (0..1) of the text's language evidence that is English; 1.0 when the text
    has no evidence either way (numbers, code, a name), so such text is judged as before."""
    cached = _cache.get(text)
    if cached is not None:
        return cached
    letters = foreign_letters = 0
    english = foreign = 0
    for word in _WORD.findall(text.lower()):
        letters += len(word)
        if not word.isascii():
            non_latin = sum(1 for ch in word if not ch.isascii() and not _latin(ch))
            foreign_letters += non_latin
            if non_latin == 0 and len(word) > 1 and _accented(word):
                foreign += 1  # "cómo", "política", "über"; not "ö ö ö" or small capitals
            continue
        if word in _ENGLISH:
            english += 1
        elif word in _FOREIGN:
            foreign += 1
    foreign += len(_INVERTED.findall(text))
    if letters and foreign_letters / letters >= 0.3:
        share = 1.0 - foreign_letters / letters
    elif english + foreign == 0:
        share = 1.0
    else:
        share = english / (english + foreign)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[text] = share
    return share
