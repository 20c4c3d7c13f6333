"""Which questions ask for the asker's own data (bypassed for requests with a user id)."""

from __future__ import annotations

import pytest

from keel.cache.personal import asks_about_own_data


@pytest.mark.parametrize("text", [
    "What's my order's tracking number?", "Where is my order?", "What is my balance?",
    "Has my refund been processed?", "Did my payment go through?",
    "Why was my card charged twice?", "When will my package arrive?",
    "Which plan are we on? Is our invoice paid?",
])
def test_questions_about_own_data(text: str) -> None:
    assert asks_about_own_data(text)


@pytest.mark.parametrize("text", [
    "How do I change my password?", "Can I export my data?",
    "How can I cancel my subscription?", "Is it possible to pause my membership?",
    "I want to delete my account", "Where can I find my invoices?",
    "Do I need to verify my email?", "What plans do you offer?",
    "please, how do I reset my PIN?",
])
def test_how_to_questions_stay_shared(text: str) -> None:
    assert not asks_about_own_data(text)
