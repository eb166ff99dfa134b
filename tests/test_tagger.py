"""Tagger tests: shapes, padding invariance, head independence and parameter counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kd.data.batching import EncodedDataset
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies
from kd.errors import FieldError
from kd.models.tagger import Tagger, TaggerConfig, TaggerOutput

SIZES = dict(word_dim=6, char_dim=4, char_hidden=3, shared_hidden=5, task_hidden=4, hidden_dim=7, dropout=0.5)

GENES = [
    Sentence(("IL-2", "binds", "p53", "."), ("B-Gene", "O", "B-Gene", "O")),
    Sentence(("tumour", "necrosis", "factor", "alpha", "rises", "fast", "."),
             ("B-Gene", "I-Gene", "I-Gene", "I-Gene", "O", "O", "O")),
    Sentence(("p53",), ("B-Gene",)),
    Sentence(("IL-2", "and", "IL-2", "ZZZ"), ("B-Gene", "O", "B-Gene", "O")),
    Sentence(("no", "genes"), ("O", "O")),
]
CHEMS = [
    Sentence(("aspirin", "and", "Na+"), ("B-Chem", "O", "B-Chem")),
    Sentence(("sodium", "chloride"), ("B-Chem", "I-Chem")),
]


def vocabularies():
    return build_vocabularies({"BC2GM": GENES, "BC5CDR.chem": CHEMS})


def make_model(tasks: dict[str, int], output: str = "softmax", seed: int = 0) -> Tagger:
    voc = vocabularies()
    torch.manual_seed(seed)
    config = TaggerConfig(tasks=tasks, num_words=len(voc.words), num_chars=len(voc.chars), output=output, **SIZES)
    return Tagger(config).eval()


def single(output: str = "softmax") -> Tagger:
    voc = vocabularies()
    return make_model({"BC2GM": len(voc.tags["BC2GM"])}, output)


def multi(output: str = "softmax") -> Tagger:
    voc = vocabularies()
    return make_model({"BC2GM": len(voc.tags["BC2GM"]), "BC5CDR.chem": len(voc.tags["BC5CDR.chem"])}, output)


def genes_dataset() -> EncodedDataset:
    return EncodedDataset(GENES, vocabularies(), "BC2GM")


def full_batch():
    return genes_dataset().batch(np.arange(len(GENES)))


# ------------------------------------------------------------------- config


def test_config_validation_and_json_round_trip():
    with pytest.raises(FieldError, match="output 'mlp': use softmax or crf"):
        TaggerConfig(tasks={"a": 3}, num_words=5, num_chars=5, output="mlp")
    with pytest.raises(ValueError, match="at least one task"):
        Tagger(TaggerConfig(tasks={}, num_words=5, num_chars=5))
    config = TaggerConfig(tasks={"b": 3, "a": 5}, num_words=5, num_chars=7, output="crf", extra={"k": 1}, **SIZES)
    restored = TaggerConfig.from_json(config.to_json())
    assert restored == config
    assert list(restored.tasks) == ["b", "a"]


# ------------------------------------------------------------------- shapes


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_single_task_output_shapes(output):
    model = single(output)
    batch = full_batch()
    B, T = batch.words.shape
    with torch.no_grad():
        out = model(batch)
    assert isinstance(out, TaggerOutput)
    assert out.logits.shape == (B, T, len(vocabularies().tags["BC2GM"]))
    assert out.task_hidden.shape == (B, T, 2 * SIZES["task_hidden"])
    assert out.shared_hidden.shape == (B, T, 2 * SIZES["shared_hidden"])
    assert torch.equal(out.mask, batch.mask)
    with torch.no_grad():
        named = model(batch, "BC2GM")
    torch.testing.assert_close(named.logits, out.logits, atol=0, rtol=0)


def test_multi_task_output_shapes():
    model = multi()
    voc = vocabularies()
    batch = full_batch()
    B, T = batch.words.shape
    with torch.no_grad():
        for task in ("BC2GM", "BC5CDR.chem"):
            out = model(batch, task)
            assert out.logits.shape == (B, T, len(voc.tags[task]))
            assert out.task_hidden.shape == (B, T, 2 * SIZES["task_hidden"])
            assert out.shared_hidden.shape == (B, T, 2 * SIZES["shared_hidden"])
    with pytest.raises(ValueError):
        model(batch)


# ------------------------------------------------------- padding invariance


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_sentence_alone_equals_sentence_in_padded_batch(output):
    model = multi(output)
    dataset = genes_dataset()
    batch = dataset.batch(np.arange(len(GENES)))
    with torch.no_grad():
        for task in ("BC2GM", "BC5CDR.chem"):
            together = model(batch, task)
            decoded = model.decode(together, task)
            for row, sentence_id in enumerate(batch.sentence_ids.tolist()):
                length = len(GENES[sentence_id])
                alone = model(dataset.batch(np.array([sentence_id])), task)
                assert alone.logits.shape[1] == length
                for name in ("logits", "task_hidden", "shared_hidden"):
                    torch.testing.assert_close(getattr(together, name)[row, :length], getattr(alone, name)[0],
                                               atol=1e-5, rtol=1e-5)
                assert torch.equal(decoded[row, :length], model.decode(alone, task)[0])


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = single()
    batch = full_batch()
    with torch.no_grad():
        a = model(batch).logits
        b = model(batch).logits
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(0)
        c = model(batch).logits
    assert not torch.allclose(a, c)


# ---------------------------------------------------------- multi-task heads


def perturb(module: torch.nn.Module, seed: int = 99) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


def test_heads_are_independent_and_shared_layers_shared():
    model = multi()
    batch = full_batch()
    with torch.no_grad():
        before = {t: model(batch, t).logits.clone() for t in model.task_names}
        perturb(model.head("BC5CDR.chem"))
        after = {t: model(batch, t).logits.clone() for t in model.task_names}
    assert torch.equal(before["BC2GM"], after["BC2GM"])
    assert not torch.allclose(before["BC5CDR.chem"], after["BC5CDR.chem"])

    with torch.no_grad():
        perturb(model.shared_lstm, seed=5)
        shared_changed = {t: model(batch, t).logits for t in model.task_names}
    for task in model.task_names:
        assert not torch.allclose(after[task], shared_changed[task])

    ids_a = {id(p) for p in model.head("BC2GM").parameters()}
    ids_b = {id(p) for p in model.head("BC5CDR.chem").parameters()}
    assert ids_a and ids_b and not ids_a & ids_b


def test_loss_of_one_task_only_trains_shared_layers_and_its_head():
    model = multi()
    batch = full_batch()
    out = model(batch, "BC2GM")
    out.logits[batch.mask].sum().backward()
    for p in model.head("BC5CDR.chem").parameters():
        assert p.grad is None or torch.all(p.grad == 0)
    for module in (model.head("BC2GM").lstm, model.head("BC2GM").hidden, model.head("BC2GM").output,
                   model.shared_lstm, model.char_lstm):
        for p in module.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_head_lookup_with_dotted_names_and_unknown_task():
    model = multi()
    assert model.head("BC5CDR.chem") is model.heads[1]
    assert model.head("BC2GM") is model.heads[0]
    with pytest.raises(KeyError) as info:
        model.head("NCBI")
    message = str(info.value)
    assert "NCBI" in message and "BC2GM" in message and "BC5CDR.chem" in message
    with pytest.raises(KeyError):
        model.num_parameters("NCBI")
    with pytest.raises(KeyError):
        model(full_batch(), "NCBI")


# ------------------------------------------------------------ parameter counts


def lstm_params(input_size: int, hidden: int) -> int:
    """One bidirectional LSTM layer: per direction W_ih (4H x I), W_hh (4H x H), two 4H biases."""
    return 2 * (4 * hidden * input_size + 4 * hidden * hidden + 2 * 4 * hidden)


def head_params(num_tags: int, crf: bool) -> int:
    s = SIZES
    count = lstm_params(2 * s["shared_hidden"], s["task_hidden"])
    count += 2 * s["task_hidden"] * s["hidden_dim"] + s["hidden_dim"]
    count += s["hidden_dim"] * num_tags + num_tags
    if crf:
        count += num_tags * num_tags + 2 * num_tags
    return count


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_num_parameters_by_hand(output):
    model = multi(output)
    s, config = SIZES, model.config
    shared = (config.num_words * s["word_dim"] + config.num_chars * s["char_dim"]
              + lstm_params(s["char_dim"], s["char_hidden"])
              + lstm_params(s["word_dim"] + 2 * s["char_hidden"], s["shared_hidden"]))
    heads = {task: head_params(k, output == "crf") for task, k in config.tasks.items()}
    for task in config.tasks:
        assert model.num_parameters(task) == shared + heads[task]
    assert model.num_parameters() == shared + sum(heads.values())
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------- decoding


def test_softmax_decode_is_argmax():
    model = multi("softmax")
    batch = full_batch()
    with torch.no_grad():
        for task in model.task_names:
            out = model(batch, task)
            assert model.crf(task) is None
            assert torch.equal(model.decode(out, task), out.logits.argmax(dim=2))


def test_crf_decode_gives_valid_ids_and_zero_at_padding():
    model = multi("crf")
    batch = full_batch()
    with torch.no_grad():
        for task, k in model.config.tasks.items():
            out = model(batch, task)
            # make padding logits large for a non-zero tag: decode must still give 0 there
            out.logits[~batch.mask] = torch.tensor([0.0] + [1e4] * (k - 1))
            tags = model.decode(out, task)
            assert tags.shape == batch.words.shape and tags.dtype == torch.int64
            assert torch.all((tags >= 0) & (tags < k))
            assert torch.all(tags[~batch.mask] == 0)
            assert torch.equal(tags, model.crf(task).decode(out.logits, batch.mask))
    # decoding with no task name uses the first task
    with torch.no_grad():
        out = model(batch, "BC2GM")
        assert torch.equal(model.decode(out), model.decode(out, "BC2GM"))


# --------------------------------------------------------------- word vectors


def test_word_vectors_are_copied_and_shape_checked():
    voc = vocabularies()
    config = TaggerConfig(tasks={"BC2GM": 3}, num_words=len(voc.words), num_chars=len(voc.chars), **SIZES)
    vectors = np.random.default_rng(0).standard_normal((len(voc.words), SIZES["word_dim"])).astype(np.float32)
    model = Tagger(config, vectors)
    assert torch.equal(model.word_embedding.weight.detach(), torch.from_numpy(vectors))
    with pytest.raises(ValueError):
        Tagger(config, vectors[:, :-1])


# ------------------------------------------------------------------- character BiLSTM groups


@pytest.mark.parametrize("order", ["shortest_first", "shuffled"])
def test_form_groups_equal_one_padded_run_over_all_forms(order):
    """encode_forms runs the character BiLSTM per length group; the reference runs it once over
    all forms padded to the longest (exact per form, see test_bilstm)."""
    from kd.models.bilstm import reversal_index

    model = single()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.cat([torch.arange(1, 31), torch.randint(1, 31, (40,), generator=generator)])
    lengths = lengths.sort().values if order == "shortest_first" else lengths[torch.randperm(70, generator=generator)]
    chars = torch.randint(2, model.config.num_chars, (len(lengths), 30), generator=generator)
    chars[torch.arange(30)[None, :] >= lengths[:, None]] = 0
    with torch.no_grad():
        grouped = model.encode_forms(chars, lengths)
        reference = model.char_lstm.final_states(model.char_embedding(chars), lengths, reversal_index(lengths, 30))
    assert grouped.shape == (70, 2 * SIZES["char_hidden"])
    torch.testing.assert_close(grouped, reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk", [3, 8192])
def test_form_table_gives_the_outputs_of_per_batch_forms(chunk):
    """Inference encodes every form of a dataset once (in chunks, shortest first) and looks the
    batch's forms up; every output must equal encoding the batch's own forms."""
    from kd.models.bilstm import reversal_index

    model = multi()
    dataset = genes_dataset()
    form_chars = torch.from_numpy(dataset.form_chars)
    form_lengths = torch.from_numpy(dataset.form_lengths)
    table = model.encode_form_table(form_chars, form_lengths, chunk=chunk)
    assert table.shape == (len(dataset.form_lengths), 2 * SIZES["char_hidden"])
    with torch.no_grad():
        width = form_chars.shape[1]
        one_by_one = torch.cat([
            model.char_lstm.final_states(model.char_embedding(form_chars[i:i + 1]), form_lengths[i:i + 1],
                                         reversal_index(form_lengths[i:i + 1], width))
            for i in range(len(form_lengths))])
        torch.testing.assert_close(table, one_by_one, atol=1e-6, rtol=1e-5)
        for sentence_ids in ([0, 1, 2, 3, 4], [3, 0], [2]):
            batch = dataset.batch(np.array(sentence_ids))
            own, looked_up = model(batch, "BC2GM"), model(batch, "BC2GM", table)
            for name in ("logits", "task_hidden", "shared_hidden"):
                torch.testing.assert_close(getattr(looked_up, name), getattr(own, name), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_zeroes_a_share_p_and_scales_the_rest(p):
    from kd.models.tagger import Dropout

    torch.manual_seed(0)
    x = torch.full((200, 500), 2.0, requires_grad=True)
    dropout = Dropout(p).train()
    y = dropout(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.01  # 100,000 draws: std of the share ~0.0016
    # Four 16-bit numbers come from each 64-bit draw: every lane must drop its share p, the
    # fourth included (an unbounded random_() leaves the top bit 0 and would keep all of it).
    for lane in range(4):
        assert abs(1 - kept.reshape(-1, 4)[:, lane].float().mean().item() - p) < 0.02
    assert abs(dropout.scale - 1 / (1 - p)) < 1e-4  # p is rounded to a multiple of 1/65536
    keep_rate = (32768 - dropout.threshold) / 65536
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / keep_rate))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / keep_rate)  # gradient flows through kept units only
    assert torch.equal(Dropout(p).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_dropout_of_half_keeps_exactly_half_in_expectation_and_handles_odd_sizes():
    from kd.models.tagger import Dropout

    dropout = Dropout(0.5).train()
    assert dropout.threshold == 0 and dropout.scale == 2.0
    torch.manual_seed(1)
    x = torch.ones(3, 7, 5)  # 105 values: not a multiple of the four lanes per draw
    y = dropout(x)
    assert y.shape == x.shape and set(y.unique().tolist()) <= {0.0, 2.0}


# ------------------------------------------------------------------- determinism


def test_gradients_are_bitwise_repeatable_with_several_threads():
    """Repeated forms in a batch: their gradients must be summed in a fixed order. (Advanced
    indexing's backward sums them in a thread-dependent order: with 2 threads, 10 repeats gave
    10 different character-BiLSTM gradients.)"""
    forms = [f"w{i}" * (1 + i % 4) for i in range(200)]
    generator = np.random.default_rng(0)
    sentences = [Sentence(tuple(forms[j] if j % 2 else "the" for j in generator.integers(0, 200, 40)), ("O",) * 40)
                 for _ in range(64)]
    voc = build_vocabularies({"t": sentences})
    torch.manual_seed(0)
    config = TaggerConfig(tasks={"t": len(voc.tags["t"])}, num_words=len(voc.words), num_chars=len(voc.chars),
                          char_dim=25, char_hidden=25, word_dim=8, shared_hidden=8, task_hidden=8, hidden_dim=8)
    model = Tagger(config).eval()
    batch = EncodedDataset(sentences, voc, "t").batch(np.arange(64))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gradients = set()
        for _ in range(10):
            model.zero_grad()
            model(batch).logits.sum().backward()
            gradients.add(b"".join(p.grad.numpy().tobytes() for p in model.char_lstm.parameters()))
    finally:
        torch.set_num_threads(threads)
    assert len(gradients) == 1
