"""The PII sanitizer: recognizers, keyed pseudonyms, offsets, the name rules."""

from __future__ import annotations

import pytest

from keel.errors import InvalidRequest
from keel.sanitize import Sanitizer
from keel.sanitize.patterns import iban_ok, luhn_ok

KEY = b"test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def san() -> Sanitizer:
    return Sanitizer(key=KEY)


def found(san: Sanitizer, text: str) -> list[tuple[str, str]]:
    return [(e.type, text[e.start:e.end]) for e in san.sanitize(text).entities]


@pytest.mark.parametrize(("text", "expected"), [
    ("mail me at UtaKortig@jourrapide.com now", ("EMAIL_ADDRESS", "UtaKortig@jourrapide.com")),
    ("call me on 0490 75 40 81 please", ("PHONE_NUMBER", "0490 75 40 81")),
    ("Desk: +41 (0)96 471 07 95", ("PHONE_NUMBER", "+41 (0)96 471 07 95")),
    ("Fax: 345-899-3560x4587", ("PHONE_NUMBER", "345-899-3560x4587")),
    ("They're not answering at 99 668472", ("PHONE_NUMBER", "99 668472")),
    ("the card 180065008155082 was charged", ("CREDIT_CARD", "180065008155082")),
    ("pay to gb42nawi04454264788619 today", ("IBAN_CODE", "gb42nawi04454264788619")),
    ("from 106.31.73.20 again", ("IP_ADDRESS", "106.31.73.20")),
    ("my ssn is 460-89-9847", ("US_SSN", "460-89-9847")),
    ("user_8812ab opened a ticket", ("ID", "user_8812ab")),
    ("key sk-abcdefghijklmnop1234 leaked", ("ID", "sk-abcdefghijklmnop1234")),
    ("My name is Akinori", ("PERSON", "Akinori")),
    ("I'm Jaroslava P. Sedláčková, originally from", ("PERSON", "Jaroslava P. Sedláčková")),
    ("the frank miller version", ("PERSON", "frank miller")),
    ("Alice:\"I'm Christopher's daughter\"", ("PERSON", "Christopher")),
])
def test_each_recognizer_finds_its_entity(san: Sanitizer, text: str,
                                          expected: tuple[str, str]) -> None:
    assert expected in found(san, text)


@pytest.mark.parametrize("text", [
    "The restaurant is at 17151 2450 Crown St",      # house numbers, not a phone
    "Name: x\nDate: 2024-12-13 12:20:39",            # a timestamp, not a phone
    "What are my options?",
    "Will you help me reset my password?",          # "Will" is a name only with a cue
    "I'll be travelling to France next week",
    "The Exversion Orchestra was founded in 1977.",
])
def test_no_false_positive_on_ordinary_text(san: Sanitizer, text: str) -> None:
    types = {t for t, _ in found(san, text)}
    assert not types & {"PHONE_NUMBER", "PERSON", "CREDIT_CARD"}, found(san, text)


def test_pseudonyms_are_keyed_stable_and_link_records(san: Sanitizer) -> None:
    a = san.sanitize("write to EmilHenriksson@rhyta.com")
    b = san.sanitize("EMILHENRIKSSON@RHYTA.COM replied")  # same person, other case
    other = Sanitizer(key=b"another-key-0123456789").sanitize("write to EmilHenriksson@rhyta.com")
    assert a.entities[0].replacement == b.entities[0].replacement
    assert a.entities[0].replacement != other.entities[0].replacement
    assert "rhyta" not in a.text and a.text == f"write to {a.entities[0].replacement}"
    # phones normalise to their digits: the same number written two ways links
    p1 = san.sanitize("call 0490 75 40 81").entities[0].replacement
    p2 = san.sanitize("call 0490-75-40-81").entities[0].replacement
    assert p1 == p2 and p1.startswith("<PHONE_NUMBER_")


def test_offsets_refer_to_the_input_and_text_is_rebuilt_from_them(san: Sanitizer) -> None:
    text = "Dear Kevin Harrison, card 4454794511390933, ip 86.121.97.248; bye"
    r = san.sanitize(text)
    rebuilt, at = [], 0
    for e in r.entities:
        rebuilt += [text[at:e.start], e.replacement]
        at = e.end
    rebuilt.append(text[at:])
    assert "".join(rebuilt) == r.text
    assert {e.type for e in r.entities} == {"PERSON", "CREDIT_CARD", "IP_ADDRESS"}


def test_key_must_be_long_bytes_and_repr_hides_it() -> None:
    with pytest.raises(InvalidRequest):
        Sanitizer(key=b"short")
    with pytest.raises(InvalidRequest):
        Sanitizer(key="a-str-key-0123456789")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="unknown entity"):
        Sanitizer(key=KEY, entities=["NOPE"])
    assert KEY.decode() not in repr(Sanitizer(key=KEY, entities=["EMAIL_ADDRESS"]))


def test_checksums() -> None:
    assert luhn_ok("4454794511390933") and not luhn_ok("4454794511390934")
    assert iban_ok("GB56 HXDO 8816 7774 6561 19") and not iban_ok("GB57HXDO88167774656119")


def test_entity_filter_and_empty_text(san: Sanitizer) -> None:
    only_mail = Sanitizer(key=KEY, entities=["EMAIL_ADDRESS"])
    assert [e.type for e in only_mail.sanitize("Dear Kevin, a@b.io").entities] == ["EMAIL_ADDRESS"]
    assert san.sanitize("").text == "" and san.sanitize("").entities == []


@pytest.mark.parametrize("text", [
    "The letter arrived at 760 Passauer Strasse 33, near the station",
    "dresses, here they are: 03751 Gerrit Achterberghove 137",
    "the corner of ul. Cicha 86 and Leokadia Trail?",
    "PSC 6477, Box 2981\nAPO AE 83700",
    "Phone:\n60-56-85-91\n\nE-mail:\nsomeone",
    "Website:\nexample.org",
    "National Van Lines is the brainchild of our founders",
])
def test_streets_codes_and_field_labels_are_not_people(san: Sanitizer, text: str) -> None:
    assert [f for f in found(san, text) if f[0] == "PERSON"] == []


def test_names_next_to_addresses_are_still_found(san: Sanitizer) -> None:
    text = "Kevin Harrison lives at 760 Passauer Strasse 33.\nDanielle: see you at 9"
    people = [v for t, v in found(san, text) if t == "PERSON"]
    assert people == ["Kevin Harrison", "Danielle"]


@pytest.mark.parametrize("text", [
    "Fe", "Which TCP port is it on?", "Whose API key is this?",
])
def test_symbols_and_question_words_are_not_people(san: Sanitizer, text: str) -> None:
    assert [f for f in found(san, text) if f[0] == "PERSON"] == []


def test_short_names_with_a_cue_and_the_full_stop_after_a_name(san: Sanitizer) -> None:
    assert [v for t, v in found(san, "Ed called. Thanks, Al") if t == "PERSON"] == ["Ed", "Al"]
    r = san.sanitize("The founder is Marta Velez.")
    assert r.text.endswith(">.") and r.text.count("<PERSON_") == 1
    assert san.sanitize("Marta Velez").text in r.text  # the same pseudonym either way


@pytest.mark.parametrize(("text", "etype", "value"), [
    ("she is at priya dot r at gmail dot com", "EMAIL_ADDRESS", "priya dot r at gmail dot com"),
    ("write to bob at example dot com today", "EMAIL_ADDRESS", "bob at example dot com"),
    ("mail j [at] acme [dot] org", "EMAIL_ADDRESS", "j [at] acme [dot] org"),
    ("reach jane.doe at acme dot co dot uk", "EMAIL_ADDRESS", "jane.doe at acme dot co dot uk"),
    ("it is priya.r at gmail.com", "EMAIL_ADDRESS", "priya.r at gmail.com"),
    ("her number is four one five five five five zero one nine nine", "PHONE_NUMBER",
     "four one five five five five zero one nine nine"),
    ("call oh seven seven double nine one two three four five six", "PHONE_NUMBER",
     "oh seven seven double nine one two three four five six"),
    ("ring four one five 555 0199 after six", "PHONE_NUMBER", "four one five 555 0199"),
    ("text nine one seven, eight eight two, zero four one three", "PHONE_NUMBER",
     "nine one seven, eight eight two, zero four one three"),
])
def test_spelled_out_emails_and_phone_numbers_are_found(san: Sanitizer, text: str,
                                                        etype: str, value: str) -> None:
    assert (etype, value) in found(san, text)


@pytest.mark.parametrize("text", [
    "meet at 10", "one or two", "pick one, two or three of the five options",
    "it costs one hundred and five", "one two three four", "look at example.com",
    "The port is 8080 and the timeout is five seconds", "version one point two",
    "Step one: open the door. Step two: sit.", "we are at home dot",
    "look at the docs dot com", "page 4 5 6 7 8 9",
])
def test_spelled_detection_leaves_ordinary_text_alone(san: Sanitizer, text: str) -> None:
    assert [t for t, _ in found(san, text) if t in ("EMAIL_ADDRESS", "PHONE_NUMBER")] == []


def test_a_spelled_phone_links_to_the_written_one_and_not_to_other_numbers(
        san: Sanitizer) -> None:
    spelled = san.sanitize("four one five five five five zero one nine nine").text
    assert spelled == san.sanitize("ring four one five 555 0199").text.split()[-1]
    assert spelled != san.sanitize("oh seven seven double nine one two three").text
