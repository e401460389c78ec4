import pytest

from n6onnx.testing import corpus


def test_doc_sentences_filters():
    doc = ("Too short here. This sentence has more than enough words\n  to be kept whole! lower case start "
           "is dropped even when it is long. Call it as >>> f(x) to see the prompt dropped. Six words in this one?")
    assert corpus.doc_sentences(doc) == ["This sentence has more than enough words to be kept whole!",
                                         "Six words in this one?"]
    assert corpus.doc_sentences(doc, min_words=3, max_words=3) == ["Too short here."]


def test_sentences_unique_and_deterministic():
    a = corpus.sentences()
    assert len(a) == len(set(a)) > 1000
    assert corpus.sentences(limit=50) == a[:50]


def test_sentences_do_not_depend_on_what_the_caller_patched(monkeypatch):
    """torch replaces inspect.getfile by an undocumented wrapper when imported; the list (and so every
    held-out range a benchmark takes from it) must not change with that."""
    import inspect

    dropped = "Work out which source or compiled file an object was defined in."  # inspect.getfile's doc
    before = corpus.sentences()
    assert dropped in before

    def patched(obj):
        return "x"

    monkeypatch.setattr(inspect, "getfile", patched)
    assert dropped not in corpus._read(5, 60)  # what reading in this process gives now
    corpus._fresh.cache_clear()
    assert corpus.sentences() == before


def test_a_failing_fresh_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(corpus.sys, "executable", "/bin/false")
    corpus._fresh.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="reading the corpus in a fresh /bin/false failed"):
            corpus.sentences()
    finally:
        corpus._fresh.cache_clear()
