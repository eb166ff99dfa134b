"""Entity scores against hand counts; predict_tags against tagging each sentence alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kd.data.batching import EncodedDataset
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies
from kd.models.tagger import Tagger, TaggerConfig
from kd.models.predict import as_sentences, predict_tags
from kd.training.evaluate import entity_scores

# Hand count (strict IOB2: an entity is B-X followed by I-X's; type and both ends must match).
GOLD = [
    ["B-Gene", "I-Gene", "O", "B-Chem"],  # Gene[0:2], Chem[3:4]
    ["O", "B-Chem", "I-Chem", "O"],  # Chem[1:3]
    ["B-Gene", "O"],  # Gene[0:1]
    ["B-Gene", "I-Gene"],  # Gene[0:2]
    ["O", "O"],  # nothing
]
PRED = [
    ["B-Gene", "O", "O", "B-Chem"],  # Gene[0:1] boundary error (FP + FN), Chem[3:4] correct
    ["O", "B-Gene", "I-Gene", "O"],  # Gene[1:3] type error (FP Gene, FN Chem)
    ["B-Gene", "B-Chem"],  # Gene[0:1] correct, Chem[1:2] spurious
    ["I-Gene", "I-Gene"],  # no B: not an entity under strict matching (FN Gene)
    ["B-Gene", "O"],  # spurious Gene
]
# gold: Gene 3, Chem 2 = 5; predicted: Gene 4 (s1, s2, s3, s5), Chem 2 (s1, s3) = 6; correct: 2
# Gene: tp 1, P 1/4, R 1/3; Chem: tp 1, P 1/2, R 1/2; micro: P 2/6, R 2/5


def f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def f1_of(values: dict) -> float:
    return values["f1"] if "f1" in values else values["f1-score"]


def test_entity_scores_by_hand():
    scores = entity_scores(GOLD, PRED)
    assert scores.precision == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(2 / 5)
    assert scores.f1 == pytest.approx(f1(1 / 3, 2 / 5))
    assert scores.f1 == pytest.approx(4 / 11)
    assert set(scores.per_type) == {"Gene", "Chem"}
    gene, chem = scores.per_type["Gene"], scores.per_type["Chem"]
    assert gene["precision"] == pytest.approx(1 / 4)
    assert gene["recall"] == pytest.approx(1 / 3)
    assert f1_of(gene) == pytest.approx(2 / 7)
    assert gene["support"] == 3
    assert chem["precision"] == pytest.approx(1 / 2)
    assert chem["recall"] == pytest.approx(1 / 2)
    assert f1_of(chem) == pytest.approx(1 / 2)
    assert chem["support"] == 2
    assert all(isinstance(v, float) for values in scores.per_type.values() for v in values.values())


def test_entity_scores_accepts_tuples_and_perfect_prediction():
    gold = [tuple(s) for s in GOLD]
    scores = entity_scores(gold, gold)
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    assert scores.per_type["Gene"]["support"] == 3


def test_entity_scores_with_no_predicted_entities():
    scores = entity_scores(GOLD, [["O"] * len(s) for s in GOLD])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)


def test_entity_scores_are_seqevals_strict_iob2_report():
    """seqeval's classification_report (strict IOB2) is the truth: micro and per-type precision,
    recall, F1 and support on random tag sequences, stray I- tags and type changes included."""
    import random

    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    tags = ["O", "O", "B-A", "I-A", "B-B", "I-B", "B-C"]
    for _ in range(300):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 6))]
        predicted = [[rng.choice(tags) for _ in sentence] for sentence in gold]
        report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
        scores = entity_scores(gold, predicted)
        micro = report.pop("micro avg")
        assert (scores.precision, scores.recall, scores.f1) == pytest.approx(
            (micro["precision"], micro["recall"], micro["f1-score"]), abs=1e-12)
        expected = {name: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
                           "support": v["support"]} for name, v in report.items() if not name.endswith(" avg")}
        assert set(scores.per_type) == set(expected), (gold, predicted)
        for name, values in expected.items():
            assert scores.per_type[name] == pytest.approx(values, abs=1e-12), (name, gold, predicted)


def test_entity_scores_refuse_sentences_of_different_lengths():
    with pytest.raises(ValueError, match="sentence 1"):
        entity_scores([["O"], ["B-A", "O"]], [["O"], ["B-A"]])
    with pytest.raises(ValueError):
        entity_scores([["O"], ["O"]], [["O"]])


def test_as_metrics_prefix():
    scores = entity_scores(GOLD, PRED)
    assert scores.as_metrics("devel") == {"devel_precision": scores.precision, "devel_recall": scores.recall,
                                          "devel_f1": scores.f1}


# ---------------------------------------------------------------- predict_tags

SIZES = dict(word_dim=6, char_dim=4, char_hidden=3, shared_hidden=5, task_hidden=4, hidden_dim=7, dropout=0.5)
TRAIN = [
    Sentence(("IL-2", "binds", "p53", "."), ("B-Gene", "O", "B-Gene", "O")),
    Sentence(("tumour", "necrosis", "factor"), ("B-Gene", "I-Gene", "I-Gene")),
    Sentence(("aspirin",), ("B-Chem",)),
]
# unsorted lengths, ties, one-token sentences: several batches with batch_size=2
TEST = [
    Sentence(("p53",), ("B-Gene",)),
    Sentence(("IL-2", "binds", "p53", "and", "tumour", "necrosis", "."), ("B-Gene", "O", "B-Gene", "O", "B-Gene", "I-Gene", "O")),
    Sentence(("factor", "."), ("B-Gene", "O")),
    Sentence(("aspirin", "binds", "IL-2"), ("B-Chem", "O", "B-Gene")),
    Sentence(("unknown",), ("O",)),
    Sentence(("binds", "binds"), ("O", "O")),
]


def setup(output: str):
    vocabularies = build_vocabularies({"genes": TRAIN})
    torch.manual_seed(0)
    config = TaggerConfig(tasks={"genes": len(vocabularies.tags["genes"])}, num_words=len(vocabularies.words),
                          num_chars=len(vocabularies.chars), output=output, **SIZES)
    model = Tagger(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the initialisation, so predictions vary across tags
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen))
    return model, vocabularies, EncodedDataset(TEST, vocabularies, "genes")


def tag_alone(model: Tagger, dataset: EncodedDataset, vocabularies, index: int) -> list[str]:
    with torch.no_grad():
        output = model(dataset.batch(np.array([index])), "genes")
        ids = model.decode(output, "genes")[0].tolist()
    return [vocabularies.tags["genes"][i] for i in ids]


@pytest.mark.parametrize("output", ["softmax", "crf"])
@pytest.mark.parametrize("batch_tokens", [1, 7, 2048])
def test_predict_tags_in_dataset_order(output, batch_tokens):
    model, vocabularies, dataset = setup(output)
    model.train()
    predictions = predict_tags(model, dataset, vocabularies, "genes", torch.device("cpu"), batch_tokens=batch_tokens)
    assert model.training  # mode restored
    assert len(predictions) == len(TEST)
    model.eval()
    for index, sentence in enumerate(TEST):
        assert len(predictions[index]) == len(sentence)
        assert all(tag in vocabularies.tags["genes"] for tag in predictions[index])
        assert predictions[index] == tag_alone(model, dataset, vocabularies, index)
    # the check is meaningful: predictions are not all the same tag
    assert len({tag for p in predictions for tag in p}) > 1


def test_predict_tags_keeps_eval_mode():
    model, vocabularies, dataset = setup("softmax")
    model.eval()
    predict_tags(model, dataset, vocabularies, "genes", torch.device("cpu"))
    assert not model.training


def test_predict_tags_on_untagged_sentences():
    model, vocabularies, _ = setup("crf")
    tokens = [list(s.tokens) for s in TEST]
    sentences = as_sentences(tokens)
    assert [list(s.tokens) for s in sentences] == tokens
    dataset = EncodedDataset(sentences, vocabularies, None, with_tags=False)
    predictions = predict_tags(model, dataset, vocabularies, "genes", torch.device("cpu"), batch_tokens=8)
    assert [len(p) for p in predictions] == [len(t) for t in tokens]
