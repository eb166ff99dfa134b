"""A kd student as a spaCy pipeline component (`pip install 'kd[spacy]'`):

    nlp = spacy.blank("en")
    nlp.add_pipe("kd_ner", config={"model": "runs:/RUN_ID/model"})   # or a run id, or a model folder

spaCy finds the factory through the `spacy_factories` entry point (pyproject.toml), so nothing of
kd is imported by hand. The component tags the Doc's own tokens (whitespace tokens left out: the
corpora have none), sentence by sentence: the Doc's sentences when a splitter ran before it
(`sentencizer`, a parser), else kd's sentence splitter's (kd.data.text.tokenise) over the text.
It sets `doc.ents` (replacing any) and `doc.spans["kd_ner"]`, the same spans with their scores in
`attrs["scores"]` (the mean probability of the tokens' tags), as spaCy's span categoriser does.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from spacy.language import Language
from spacy.tokens import Doc, SpanGroup

from kd.data.text.tokenise import Token, split_sentences
from kd.errors import KdError
from kd.models.inference import SavedTagger, load_saved_tagger
from kd.models.raw_text import DocumentTooLong, check_budget, tag_split_documents
from kd.tracking.logged_models import fetched_model

SPANS_KEY = "kd_ner"


@Language.factory("kd_ner", default_config={"model": None, "task": None, "tracking_uri": None, "batch_size": 64})
def make_kd_ner(nlp: Language, name: str, model: str | None, task: str | None, tracking_uri: str | None,
                batch_size: int) -> "KdEntityRecognizer":
    """`model`: a run id, an MLflow model URI (runs:/ID/model, models:/...) or a saved model
    folder; `tracking_uri`: where runs are found, MLflow's own (MLFLOW_TRACKING_URI) when null, as
    for any MLflow URI; `task`: a multi-task model's corpus."""
    if not model:
        raise KdError('kd_ner: config "model" is required (a run id, runs:/RUN_ID/model or a model folder)')
    import mlflow

    with fetched_model(model, tracking_uri or mlflow.get_tracking_uri()) as (directory, shown_as):
        saved = load_saved_tagger(directory, shown_as=shown_as)
    return KdEntityRecognizer(SavedTagger(saved, "cpu", task), batch_size)


class KdEntityRecognizer:
    def __init__(self, tagger: SavedTagger, batch_size: int) -> None:
        self.tagger = tagger
        self.batch_size = batch_size

    def __call__(self, doc: Doc) -> Doc:
        return next(self.pipe([doc]))

    def pipe(self, docs: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        """The docs tagged `batch_size` at a time: their sentences go to the tagger together."""
        docs = iter(docs)
        while batch := list(islice(docs, batch_size or self.batch_size)):
            self.set_entities(batch)
            yield from batch

    def set_entities(self, docs: list[Doc]) -> None:
        split = [doc_sentences(doc) for doc in docs]
        try:
            check_budget(split)
        except DocumentTooLong as error:
            raise KdError(f"kd_ner: document {error.index + 1} of the batch: {error}") from None
        for doc, entities in zip(docs, tag_split_documents(self.tagger, [doc.text for doc in docs], split)):
            spans = [doc.char_span(e.start, e.end, label=e.label) for e in entities]
            doc.ents = spans
            doc.spans[SPANS_KEY] = SpanGroup(doc, name=SPANS_KEY, spans=spans,
                                             attrs={"scores": [e.score for e in entities]})


def doc_sentences(doc: Doc) -> list[list[Token]]:
    """The Doc's tokens as kd tokens with character offsets, grouped by the Doc's sentences if a
    splitter ran, else by kd's sentences of the text (a token goes to the sentence it starts in)."""
    tokens = [Token(token.text, token.idx, token.idx + len(token.text)) for token in doc if not token.is_space]
    if doc.has_annotation("SENT_START"):
        ends = [sentence.end_char for sentence in doc.sents]
    else:
        ends = [sentence[-1].end for sentence in split_sentences(doc.text)]
    sentences: list[list[Token]] = [[] for _ in ends]
    current = 0
    for token in tokens:
        while current < len(ends) - 1 and token.start >= ends[current]:
            current += 1
        sentences[current].append(token)
    return [sentence for sentence in sentences if sentence]
