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
