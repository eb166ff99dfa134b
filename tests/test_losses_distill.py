"""The distillation losses against values computed by hand (plain Python, no kd helpers) on
made-up student outputs and teacher targets; padding, zero weights, the registry, the options'
validation and the student's projections."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from kd.cache.store import LAYERS
from kd.errors import KdError
from kd.losses.distill import (LOSSES, DistillWeights, StudentView, get_loss, hard, per_sentence, register,
                               weighted_total)
from kd.losses.supervised import hard_label_loss
from kd.models.crf import CRF
from kd.models.tagger import Tagger, TaggerConfig, TaggerOutput
from kd.option_schema import LOSS_NAMES
from kd.training.distillation import DistillOptions, StudentModel

LENGTHS = [3, 2]  # position (1, 2) is padding
B, T, K = 2, 3, 3
MASK = [[t < length for t in range(T)] for length in LENGTHS]
REAL = [(b, t) for b, length in enumerate(LENGTHS) for t in range(length)]

STUDENT_LOGITS = [[[1.0, -0.5, 0.3], [0.2, 0.8, -1.1], [-0.7, 0.4, 1.5]],
                  [[0.6, 0.1, -0.2], [-1.3, 0.9, 0.0], [0.5, 0.5, 0.5]]]
TEACHER_LOGITS = [[[0.7, -0.2, 0.1], [0.0, 1.2, -0.9], [-1.0, 0.3, 1.1]],
                  [[1.1, -0.4, 0.2], [-0.8, 0.5, 0.6], [0.0, 0.0, 0.0]]]
TAGS = [[0, 1, 2], [2, 1, 0]]
STUDENT_TASK = [[[0.1, -0.2, 0.3, 0.4], [0.5, 0.0, -0.6, 0.2], [-0.3, 0.7, 0.1, -0.1]],
                [[0.2, 0.2, -0.4, 0.6], [-0.5, 0.3, 0.8, 0.0], [0.0, 0.0, 0.0, 0.0]]]
TEACHER_TASK = [[[0.3, -0.1, 0.0, 0.5], [0.2, 0.4, -0.2, 0.1], [-0.6, 0.5, 0.3, 0.2]],
                [[0.0, 0.1, -0.3, 0.9], [-0.2, -0.1, 0.6, 0.4], [0.0, 0.0, 0.0, 0.0]]]
STUDENT_SHARED = [[[0.4, -0.4], [0.1, 0.9], [-0.8, 0.2]], [[0.3, 0.0], [0.7, -0.5], [0.0, 0.0]]]
TEACHER_SHARED = [[[0.1, -0.3], [0.6, 0.5], [-0.2, 0.0]], [[0.9, 0.2], [0.4, -0.1], [0.0, 0.0]]]
# A transformer teacher's encoder states, matched by the student's (projected) task states.
TEACHER_ENCODER = [[[0.2, 0.3, -0.5, 0.1], [0.0, -0.4, 0.2, 0.6], [0.9, 0.1, 0.0, -0.3]],
                   [[-0.1, 0.5, 0.4, 0.2], [0.3, 0.3, -0.7, 0.1], [0.0, 0.0, 0.0, 0.0]]]
TEACHER_MARGINALS = [[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
                     [[0.5, 0.25, 0.25], [0.05, 0.9, 0.05], [0.0, 0.0, 0.0]]]

# A K=2 example for the CRF student, whose marginals are checked by enumerating every path.
K2 = 2
STUDENT_LOGITS_2 = [[[0.4, -0.3], [1.2, 0.1], [-0.5, 0.6]], [[0.0, 0.9], [0.3, -0.8], [0.0, 0.0]]]
TEACHER_MARGINALS_2 = [[[0.8, 0.2], [0.3, 0.7], [0.45, 0.55]], [[0.1, 0.9], [0.6, 0.4], [0.0, 0.0]]]
TAGS_2 = [[0, 1, 1], [1, 0, 0]]
TRANSITIONS_2 = [[0.3, -0.6], [0.8, 0.1]]
START_2 = [0.2, -0.4]
END_2 = [-0.3, 0.5]

# --------------------------------------------------------------------------- by hand


def logsumexp(row):
    top = max(row)
    return top + math.log(sum(math.exp(x - top) for x in row))


def log_softmax(row, tau=1.0):
    scaled = [x / tau for x in row]
    norm = logsumexp(scaled)
    return [x - norm for x in scaled]


def softmax(row, tau=1.0):
    return [math.exp(x) for x in log_softmax(row, tau)]


def hand_hard_softmax(logits=STUDENT_LOGITS, tags=TAGS):
    return sum(logsumexp(logits[b][t]) - logits[b][t][tags[b][t]] for b, t in REAL) / B


def hand_mse(student, teacher):
    return sum(sum((s - c) ** 2 for s, c in zip(student[b][t], teacher[b][t])) / len(student[b][t])
               for b, t in REAL) / B


def hand_soft_ce(tau, student=STUDENT_LOGITS, teacher=TEACHER_LOGITS):
    total = 0.0
    for b, t in REAL:
        p, log_q = softmax(teacher[b][t], tau), log_softmax(student[b][t], tau)
        total += -sum(pk * qk for pk, qk in zip(p, log_q))
    return total / B


def hand_kl(tau, student=STUDENT_LOGITS, teacher=TEACHER_LOGITS):
    total = 0.0
    for b, t in REAL:
        log_p, log_q = log_softmax(teacher[b][t], tau), log_softmax(student[b][t], tau)
        total += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
    return tau ** 2 * total / B


def hand_entropy(tau, teacher=TEACHER_LOGITS):
    total = 0.0
    for b, t in REAL:
        log_p = log_softmax(teacher[b][t], tau)
        total += -sum(math.exp(lp) * lp for lp in log_p)
    return total / B


def hand_marginals_ce_softmax():
    total = 0.0
    for b, t in REAL:
        log_q = log_softmax(STUDENT_LOGITS[b][t])
        total += -sum(m * lq for m, lq in zip(TEACHER_MARGINALS[b][t], log_q))
    return total / B


def path_score(emissions, path):
    score = START_2[path[0]] + END_2[path[-1]] + sum(emissions[t][y] for t, y in enumerate(path))
    return score + sum(TRANSITIONS_2[path[t - 1]][path[t]] for t in range(1, len(path)))


def brute_force_marginals(emissions, length):
    """P(y_t = k) for one sentence of the K=2 example, by enumerating every tag path."""
    paths = list(itertools.product(range(K2), repeat=length))
    weights = [math.exp(path_score(emissions, p)) for p in paths]
    z = sum(weights)
    return [[sum(w for p, w in zip(paths, weights) if p[t] == k) / z for k in range(K2)] for t in range(length)]


def brute_force_nll(emissions, tags, length):
    paths = itertools.product(range(K2), repeat=length)
    log_z = math.log(sum(math.exp(path_score(emissions, p)) for p in paths))
    return log_z - path_score(emissions, tags[:length])


def hand_crf_hard():
    return sum(brute_force_nll(STUDENT_LOGITS_2[b], TAGS_2[b], length) for b, length in enumerate(LENGTHS)) / B


def hand_marginals_ce_crf():
    total = 0.0
    for b, length in enumerate(LENGTHS):
        marginals = brute_force_marginals(STUDENT_LOGITS_2[b], length)
        for t in range(length):
            total += -sum(m * math.log(q) for m, q in zip(TEACHER_MARGINALS_2[b][t], marginals[t]))
    return total / B


# --------------------------------------------------------------------------- tensors


def tensor(values, requires_grad=False):
    return torch.tensor(values, dtype=torch.float32, requires_grad=requires_grad)


def mask_tensor():
    return torch.tensor(MASK)


def made_up_view(logits=STUDENT_LOGITS, task=STUDENT_TASK, shared=STUDENT_SHARED, crf=None):
    """A StudentView whose logits and hidden states are leaves (so their gradients can be read);
    the hidden states have the teacher's sizes, i.e. the projection is the identity."""
    output = TaggerOutput(logits=tensor(logits, True), task_hidden=tensor(task, True),
                          shared_hidden=tensor(shared, True), mask=mask_tensor())
    return StudentView(output=output, crf=crf, task_hidden=output.task_hidden, shared_hidden=output.shared_hidden,
                       encoder_hidden=output.task_hidden)


def teacher_targets(logits=TEACHER_LOGITS, task=TEACHER_TASK, shared=TEACHER_SHARED, marginals=TEACHER_MARGINALS,
                    encoder=TEACHER_ENCODER):
    return {"logits": tensor(logits), "task": tensor(task), "shared": tensor(shared), "marginals": tensor(marginals),
            "encoder": tensor(encoder)}


def tags_tensor(tags=TAGS):
    return torch.tensor(tags)


def k2_crf():
    crf = CRF(K2)
    with torch.no_grad():
        crf.transitions.copy_(tensor(TRANSITIONS_2))
        crf.start.copy_(tensor(START_2))
        crf.end.copy_(tensor(END_2))
    return crf


def run_loss(name, weights, view=None, targets=None, tags=None):
    view = view if view is not None else made_up_view()
    return get_loss(name).function(view, targets if targets is not None else teacher_targets(),
                                   tags if tags is not None else tags_tensor(), weights)


def value(term):
    assert term.dim() == 0
    return term.item()


# --------------------------------------------------------------------------- each loss


def test_logits_loss_equals_hand_computation():
    w = DistillWeights(alpha=0.3, beta=0.7)
    terms = run_loss("logits", w)
    hard_term, mse_term = hand_hard_softmax(), hand_mse(STUDENT_LOGITS, TEACHER_LOGITS)
    assert set(terms) == {"hard", "logits_mse", "loss"}
    assert value(terms["hard"]) == pytest.approx(hard_term, rel=1e-6)
    assert value(terms["logits_mse"]) == pytest.approx(mse_term, rel=1e-6)
    assert value(terms["loss"]) == pytest.approx(0.3 * hard_term + 0.7 * mse_term, rel=1e-6)


def test_beta_defaults_to_one_minus_alpha():
    options = DistillOptions(loss="logits", alpha=0.3, cache_run="cache")
    weights = options.weights()
    assert weights.alpha == 0.3 and weights.beta == pytest.approx(0.7)
    assert (weights.gamma, weights.kappa, weights.tau) == (0.0, 0.0, 1.0)
    terms = run_loss("logits", weights)
    expected = 0.3 * hand_hard_softmax() + 0.7 * hand_mse(STUDENT_LOGITS, TEACHER_LOGITS)
    assert value(terms["loss"]) == pytest.approx(expected, rel=1e-6)
    # An explicit beta wins, and a default that would be negative is refused, not clipped to 0.
    assert DistillOptions(alpha=0.3, beta=0.2, cache_run="c").weights().beta == 0.2
    with pytest.raises(KdError, match="alpha 1.5: beta defaults to 1 - alpha"):
        DistillOptions(alpha=1.5, cache_run="c")
    assert DistillOptions(alpha=1.5, beta=0.0, cache_run="c").weights().beta == 0.0
    assert DistillOptions(cache_run="c").weights() == DistillWeights(alpha=0.5, beta=0.5)


def test_encoder_loss_equals_hand_computation():
    """A transformer teacher's encoder states against the student's task states (identity projection here)."""
    w = DistillWeights(alpha=0.4, beta=0.6, gamma=0.25)
    terms = run_loss("encoder", w)
    expected = {"hard": hand_hard_softmax(), "logits_mse": hand_mse(STUDENT_LOGITS, TEACHER_LOGITS),
                "encoder_mse": hand_mse(STUDENT_TASK, TEACHER_ENCODER)}
    assert set(terms) == {*expected, "loss"}
    for name, number in expected.items():
        assert value(terms[name]) == pytest.approx(number, rel=1e-6), name
    total = 0.4 * expected["hard"] + 0.6 * expected["logits_mse"] + 0.25 * expected["encoder_mse"]
    assert value(terms["loss"]) == pytest.approx(total, rel=1e-6)


def test_intermediate_loss_equals_hand_computation():
    w = DistillWeights(alpha=0.4, beta=0.6, gamma=0.25, kappa=1.5)
    terms = run_loss("intermediate", w)
    expected = {"hard": hand_hard_softmax(), "logits_mse": hand_mse(STUDENT_LOGITS, TEACHER_LOGITS),
                "task_mse": hand_mse(STUDENT_TASK, TEACHER_TASK),
                "shared_mse": hand_mse(STUDENT_SHARED, TEACHER_SHARED)}
    assert set(terms) == {*expected, "loss"}
    for name, number in expected.items():
        assert value(terms[name]) == pytest.approx(number, rel=1e-6), name
    total = (0.4 * expected["hard"] + 0.6 * expected["logits_mse"] + 0.25 * expected["task_mse"]
             + 1.5 * expected["shared_mse"])
    assert value(terms["loss"]) == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_soft_loss_equals_hand_computation(tau):
    w = DistillWeights(alpha=0.2, beta=0.8, tau=tau)
    terms = run_loss("soft", w)
    assert set(terms) == {"hard", "soft_ce", "loss"}
    # The hard term is never tempered.
    assert value(terms["hard"]) == pytest.approx(hand_hard_softmax(), rel=1e-6)
    assert value(terms["soft_ce"]) == pytest.approx(hand_soft_ce(tau), rel=1e-6)
    assert value(terms["loss"]) == pytest.approx(0.2 * hand_hard_softmax() + 0.8 * hand_soft_ce(tau), rel=1e-6)


def test_soft_loss_temperature_changes_the_term():
    assert hand_soft_ce(1.0) != pytest.approx(hand_soft_ce(2.0), rel=1e-3)
    one = value(run_loss("soft", DistillWeights(tau=1.0))["soft_ce"])
    two = value(run_loss("soft", DistillWeights(tau=2.0))["soft_ce"])
    assert one != pytest.approx(two, rel=1e-3)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kl_loss_equals_hand_computation(tau):
    w = DistillWeights(alpha=0.5, beta=0.5, tau=tau)
    terms = run_loss("kl", w)
    assert set(terms) == {"hard", "kl", "loss"}
    assert value(terms["kl"]) == pytest.approx(hand_kl(tau), rel=1e-5)
    assert value(terms["loss"]) == pytest.approx(0.5 * hand_hard_softmax() + 0.5 * hand_kl(tau), rel=1e-6)
    assert value(terms["kl"]) > 0


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kl_is_zero_when_the_student_matches_the_teacher(tau):
    for student in (TEACHER_LOGITS, [[[x + 3.0 for x in row] for row in sentence] for sentence in TEACHER_LOGITS]):
        # Adding a constant to every logit of a token leaves its distribution unchanged.
        terms = run_loss("kl", DistillWeights(tau=tau), view=made_up_view(logits=student))
        assert abs(value(terms["kl"])) < 1e-6


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_soft_cross_entropy_minus_kl_is_the_teacher_entropy(tau):
    soft = value(run_loss("soft", DistillWeights(tau=tau))["soft_ce"])
    kl = value(run_loss("kl", DistillWeights(tau=tau))["kl"])
    assert soft - kl / tau ** 2 == pytest.approx(hand_entropy(tau), rel=1e-5)


def test_marginals_loss_softmax_student_equals_hand_computation():
    w = DistillWeights(alpha=0.3, beta=0.7)
    terms = run_loss("marginals", w)
    assert set(terms) == {"hard", "marginals_ce", "loss"}
    assert value(terms["marginals_ce"]) == pytest.approx(hand_marginals_ce_softmax(), rel=1e-6)
    assert value(terms["loss"]) == pytest.approx(0.3 * hand_hard_softmax() + 0.7 * hand_marginals_ce_softmax(),
                                                 rel=1e-6)


def crf_view_and_targets():
    view = made_up_view(logits=STUDENT_LOGITS_2, crf=k2_crf())
    targets = teacher_targets(logits=[[[0.0] * K2] * T] * B, marginals=TEACHER_MARGINALS_2)
    return view, targets


def test_crf_marginals_match_brute_force():
    """The reference the CRF student's marginal loss is checked against is right."""
    crf = k2_crf()
    marginals = crf.marginals(tensor(STUDENT_LOGITS_2), mask_tensor())
    for b, length in enumerate(LENGTHS):
        expected = brute_force_marginals(STUDENT_LOGITS_2[b], length)
        for t in range(length):
            assert marginals[b, t].tolist() == pytest.approx(expected[t], rel=1e-5)


def test_marginals_loss_crf_student_uses_its_crf_marginals():
    view, targets = crf_view_and_targets()
    w = DistillWeights(alpha=0.3, beta=0.7)
    terms = run_loss("marginals", w, view=view, targets=targets, tags=tags_tensor(TAGS_2))
    assert value(terms["marginals_ce"]) == pytest.approx(hand_marginals_ce_crf(), rel=1e-5)
    assert value(terms["hard"]) == pytest.approx(hand_crf_hard(), rel=1e-5)
    assert value(terms["loss"]) == pytest.approx(0.3 * hand_crf_hard() + 0.7 * hand_marginals_ce_crf(), rel=1e-5)
    # Not the softmax posteriors: the transitions matter.
    softmax_ce = sum(-sum(m * lq for m, lq in zip(TEACHER_MARGINALS_2[b][t], log_softmax(STUDENT_LOGITS_2[b][t])))
                     for b, t in REAL) / B
    assert value(terms["marginals_ce"]) != pytest.approx(softmax_ce, rel=1e-3)
    # The CRF's parameters are trained by the marginal term.
    terms = run_loss("marginals", DistillWeights(alpha=0.0, beta=1.0), view=view, targets=targets,
                     tags=tags_tensor(TAGS_2))
    terms["loss"].backward()
    assert view.crf.transitions.grad is not None and view.crf.transitions.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["logits", "soft", "kl", "marginals"])
def test_crf_student_hard_term_is_the_sequence_nll(name):
    view, targets = crf_view_and_targets()
    terms = run_loss(name, DistillWeights(alpha=0.6, beta=0.4), view=view, targets=targets, tags=tags_tensor(TAGS_2))
    expected = view.crf.nll(view.output.logits, tags_tensor(TAGS_2), mask_tensor()).sum() / B
    torch.testing.assert_close(terms["hard"], expected)
    assert value(terms["hard"]) == pytest.approx(hand_crf_hard(), rel=1e-5)


# --------------------------------------------------------------------------- padding

ALL_WEIGHTS = DistillWeights(alpha=0.4, beta=0.6, gamma=0.3, kappa=0.2, tau=2.0)


def weights_for(name):
    """Every weight of the loss non-zero (gamma exists for intermediate and encoder, kappa for intermediate)."""
    if name in ("intermediate", "encoder"):
        return ALL_WEIGHTS
    return DistillWeights(alpha=0.4, beta=0.6, tau=2.0)


def with_padding(values, fill):
    """A copy of a (B, T, D) nested list with every padded position set to `fill` (one per dim)."""
    copy = [[list(row) for row in sentence] for sentence in values]
    for b, length in enumerate(LENGTHS):
        for t in range(length, T):
            copy[b][t] = [fill(d) for d in range(len(copy[b][t]))]
    return copy


def garbage(d):
    return (-1.0) ** d * 1e3 + 17.0 * d


BUILTIN = ["logits", "intermediate", "soft", "kl", "marginals", "encoder"]


def padding_inputs(crf: bool, garbage_padding: bool):
    logits = STUDENT_LOGITS
    tags = [list(row) for row in TAGS]
    targets = dict(logits=TEACHER_LOGITS, task=TEACHER_TASK, shared=TEACHER_SHARED, marginals=TEACHER_MARGINALS,
                   encoder=TEACHER_ENCODER)
    task, shared = STUDENT_TASK, STUDENT_SHARED
    if garbage_padding:
        logits = with_padding(logits, garbage)
        task, shared = with_padding(task, garbage), with_padding(shared, lambda d: -garbage(d))
        targets = {k: with_padding(v, lambda d: 5e2 * (d + 1)) for k, v in targets.items()}
        tags[1][2] = -100
    crf_module = None
    if crf:
        crf_module = CRF(K)
        with torch.no_grad():
            crf_module.transitions.copy_(tensor([[0.1, -0.2, 0.3], [0.5, 0.0, -0.4], [-0.1, 0.2, 0.6]]))
            crf_module.start.copy_(tensor([0.1, 0.0, -0.3]))
            crf_module.end.copy_(tensor([0.0, 0.4, -0.2]))
    return made_up_view(logits=logits, task=task, shared=shared, crf=crf_module), teacher_targets(**targets), \
        torch.tensor(tags)


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
@pytest.mark.parametrize("name", BUILTIN)
def test_padding_never_contributes(name, crf):
    view, targets, tags = padding_inputs(crf, garbage_padding=False)
    clean = run_loss(name, weights_for(name), view=view, targets=targets, tags=tags)
    view, targets, tags = padding_inputs(crf, garbage_padding=True)
    dirty = run_loss(name, weights_for(name), view=view, targets=targets, tags=tags)
    assert set(clean) == set(dirty)
    for term in clean:
        assert torch.equal(clean[term], dirty[term]), term
    dirty["loss"].backward()
    padded = ~mask_tensor()
    for leaf in (view.output.logits, view.output.task_hidden, view.output.shared_hidden):
        if leaf.grad is None:  # a layer the loss does not use
            continue
        assert torch.isfinite(leaf.grad).all()
        assert torch.all(leaf.grad[padded] == 0)
    assert view.output.logits.grad[mask_tensor()].abs().sum() > 0


@pytest.mark.parametrize("name", BUILTIN)
def test_nan_teacher_targets_at_padding_leave_every_value_unchanged(name):
    view, targets, tags = padding_inputs(False, garbage_padding=False)
    clean = run_loss(name, weights_for(name), view=view, targets=targets, tags=tags)
    nan_targets = {k: v.clone() for k, v in targets.items()}
    for v in nan_targets.values():
        v[~mask_tensor()] = float("nan")
    dirty = run_loss(name, weights_for(name), view=made_up_view(), targets=nan_targets, tags=tags)
    for term in clean:
        assert torch.equal(clean[term], dirty[term]), term


def test_every_term_is_per_sentence_not_per_token():
    """Each term is a sum over a sentence's tokens: a batch of one sentence repeated twice gives
    the same values as that sentence alone."""
    def one_sentence(values, b, copies):
        return [values[b]] * copies

    for name in BUILTIN:
        results = []
        for copies in (1, 2):
            logits = one_sentence(STUDENT_LOGITS, 0, copies)
            output = TaggerOutput(logits=tensor(logits), task_hidden=tensor(one_sentence(STUDENT_TASK, 0, copies)),
                                  shared_hidden=tensor(one_sentence(STUDENT_SHARED, 0, copies)),
                                  mask=torch.ones(copies, T, dtype=torch.bool))
            view = StudentView(output=output, crf=None, task_hidden=output.task_hidden,
                               shared_hidden=output.shared_hidden, encoder_hidden=output.task_hidden)
            targets = {k: tensor(one_sentence(v, 0, copies)) for k, v in dict(
                logits=TEACHER_LOGITS, task=TEACHER_TASK, shared=TEACHER_SHARED, marginals=TEACHER_MARGINALS,
                encoder=TEACHER_ENCODER).items()}
            results.append(run_loss(name, weights_for(name), view=view, targets=targets,
                                    tags=torch.tensor([TAGS[0]] * copies)))
        for term in results[0]:
            torch.testing.assert_close(results[0][term], results[1][term])


# --------------------------------------------------------------------------- zero weights


def test_zero_weight_terms_are_detached_and_add_nothing():
    view = made_up_view()
    w = DistillWeights(alpha=0.5, beta=0.0, gamma=0.3, kappa=0.0)
    terms = run_loss("intermediate", w, view=view)
    assert terms["logits_mse"].grad_fn is None and not terms["logits_mse"].requires_grad
    assert terms["shared_mse"].grad_fn is None and not terms["shared_mse"].requires_grad
    assert terms["hard"].requires_grad and terms["task_mse"].requires_grad
    # Still computed for logging.
    assert value(terms["logits_mse"]) == pytest.approx(hand_mse(STUDENT_LOGITS, TEACHER_LOGITS), rel=1e-6)
    assert value(terms["shared_mse"]) == pytest.approx(hand_mse(STUDENT_SHARED, TEACHER_SHARED), rel=1e-6)
    expected = 0.5 * hand_hard_softmax() + 0.3 * hand_mse(STUDENT_TASK, TEACHER_TASK)
    assert value(terms["loss"]) == pytest.approx(expected, rel=1e-6)
    terms["loss"].backward()
    assert view.output.shared_hidden.grad is None, "the shared states only enter a zero-weight term"
    assert view.output.task_hidden.grad is not None


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
@pytest.mark.parametrize("name", BUILTIN)
def test_alpha_one_and_other_weights_zero_is_exactly_the_hard_loss(name, crf):
    view, targets, tags = padding_inputs(crf, garbage_padding=False)
    terms = run_loss(name, DistillWeights(alpha=1.0, beta=0.0, gamma=0.0, kappa=0.0, tau=2.0), view=view,
                     targets=targets, tags=tags)
    plain = hard_label_loss(view.output, tags, view.crf)
    assert torch.equal(terms["loss"], terms["hard"])
    assert torch.equal(terms["loss"], plain)
    for name_, term in terms.items():
        if name_ not in ("loss", "hard"):
            assert not term.requires_grad, name_
    # The same gradient as the single-task model's loss.
    terms["loss"].backward()
    distilled_grad = view.output.logits.grad.clone()
    view.output.logits.grad = None
    hard_label_loss(view.output, tags, view.crf).backward()
    assert torch.equal(distilled_grad, view.output.logits.grad)


def test_weighted_total_weights_and_detaches():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    c = torch.tensor(5.0, requires_grad=True)
    terms = weighted_total({"a": a * 1, "b": b * 1, "c": c * 1}, {"a": 1.0, "b": 0.0, "c": 0.25})
    assert terms["loss"].item() == pytest.approx(2.0 + 0.25 * 5.0)
    assert not terms["b"].requires_grad and terms["b"].item() == 3.0
    terms["loss"].backward()
    assert a.grad.item() == 1.0 and c.grad.item() == 0.25 and b.grad is None


def test_per_sentence_sums_real_tokens_and_divides_by_sentences():
    values = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, float("nan")]])
    assert per_sentence(values, mask_tensor()).item() == (1 + 2 + 4 + 8 + 16) / 2


# --------------------------------------------------------------------------- registry


def test_every_registered_loss_is_callable_and_declares_its_layers():
    assert set(BUILTIN) <= set(LOSSES)
    expected_layers = {"logits": ("logits",), "intermediate": ("logits", "task", "shared"), "soft": ("logits",),
                       "kl": ("logits",), "marginals": ("marginals",)}
    for name, registered in LOSSES.items():
        assert callable(registered.function), name
        assert registered.layers and set(registered.layers) <= set(LAYERS), name
        assert get_loss(name) is registered
        if name in expected_layers:
            assert registered.layers == expected_layers[name]
        terms = registered.function(made_up_view(), teacher_targets(), tags_tensor(), weights_for(name))
        assert "loss" in terms and "hard" in terms
        assert DistillOptions(loss=name, cache_run="c").layers == registered.layers


def test_unknown_loss_is_a_kd_error():
    with pytest.raises(KdError, match="nope"):
        get_loss("nope")
    with pytest.raises(KdError, match="nope"):
        DistillOptions(loss="nope", cache_run="c")


def test_a_loss_registered_in_one_function_is_usable():
    name = "test_only_l1"
    assert name not in LOSSES
    try:
        @register(name, layers=("logits",))
        def l1_loss(student, teacher, tags, w):
            mask = student.output.mask
            terms = {"hard": hard(student, tags),
                     "l1": per_sentence((student.output.logits - teacher["logits"]).abs().mean(dim=2), mask)}
            return weighted_total(terms, {"hard": w.alpha, "l1": w.beta})

        registered = get_loss(name)
        assert registered.function is l1_loss and registered.layers == ("logits",)
        options = DistillOptions(loss=name, alpha=0.25, cache_run="c")
        assert options.layers == ("logits",)
        terms = registered.function(made_up_view(), teacher_targets(), tags_tensor(), options.weights())
        l1 = sum(sum(abs(s - c) for s, c in zip(STUDENT_LOGITS[b][t], TEACHER_LOGITS[b][t])) / K for b, t in REAL) / B
        assert value(terms["l1"]) == pytest.approx(l1, rel=1e-6)
        assert value(terms["loss"]) == pytest.approx(0.25 * hand_hard_softmax() + 0.75 * l1, rel=1e-6)
    finally:
        LOSSES.pop(name, None)
        LOSS_NAMES.remove(name)
    with pytest.raises(KdError):
        get_loss(name)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("kwargs", [
    {},  # neither a cache nor teachers
    {"teacher_runs": []},
    {"cache_run": "c", "teacher_runs": ["t"]},  # both
])
def test_exactly_one_of_cache_and_teachers(kwargs):
    with pytest.raises(KdError, match="--cache"):
        DistillOptions(**kwargs)


@pytest.mark.parametrize("kwargs, needle", [
    ({"alpha": -0.1}, "^alpha "),
    ({"beta": -0.5}, "^beta "),
    ({"loss": "intermediate", "gamma": -1.0}, "^gamma "),
    ({"loss": "intermediate", "kappa": -1.0}, "^kappa "),
    ({"tau": 0.0}, "^tau "),
    ({"tau": -2.0}, "^tau "),
    ({"loss": "logits", "gamma": 0.5}, "^gamma "),
    ({"loss": "soft", "kappa": 0.5}, "^kappa "),
    ({"alpha": 0.0, "beta": 0.0}, "zero"),
    ({"loss": "intermediate", "alpha": 0.0, "beta": 0.0, "gamma": 0.0, "kappa": 0.0}, "zero"),
    ({"alpha": 1.0, "beta": 0.0, "loss": "kl", "tau": 0.0}, "^tau "),
])
def test_invalid_options_are_kd_errors_naming_the_field(kwargs, needle):
    """The library names the field (`tau 0.0: ...`); the CLI words it as an option (tests/test_field_errors.py)."""
    with pytest.raises(KdError, match=needle):
        DistillOptions(cache_run="c", **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"alpha": 0.0},  # beta defaults to 1
    {"alpha": 1.0, "beta": 0.0},
    {"loss": "intermediate", "alpha": 0.0, "beta": 0.0, "gamma": 1.0},
    {"loss": "intermediate", "alpha": 0.0, "beta": 0.0, "kappa": 1.0},
    {"loss": "kl", "tau": 0.5},
])
def test_valid_options(kwargs):
    DistillOptions(cache_run="c", **kwargs)
    DistillOptions(teacher_runs=["t1", "t2"], **kwargs)


# --------------------------------------------------------------------------- projections


def small_tagger(task_hidden=5, shared_hidden=3):
    config = TaggerConfig(tasks={"tiny": K}, num_words=10, num_chars=8, word_dim=4, char_dim=2, char_hidden=2,
                          shared_hidden=shared_hidden, task_hidden=task_hidden, hidden_dim=4, dropout=0.0)
    torch.manual_seed(0)
    return Tagger(config)


def widths(task, shared):
    return {"logits": K, "task": task, "shared": shared, "marginals": K}


@pytest.mark.parametrize("teacher_task, teacher_shared, layers, expected", [
    (10, 6, ("logits", "task", "shared"), set()),  # same sizes: identity
    (16, 6, ("logits", "task", "shared"), {"task"}),
    (10, 12, ("logits", "task", "shared"), {"shared"}),
    (16, 12, ("logits", "task", "shared"), {"task", "shared"}),
    (16, 12, ("logits",), set()),  # the loss uses no hidden layer
    (16, 12, ("marginals",), set()),
    (16, 12, ("logits", "task"), {"task"}),
])
def test_projections_only_where_sizes_differ_and_the_loss_uses_the_layer(teacher_task, teacher_shared, layers,
                                                                         expected):
    student = StudentModel(small_tagger(task_hidden=5, shared_hidden=3), widths(teacher_task, teacher_shared), layers)
    assert set(student.projections) == expected
    own = {"task": 10, "shared": 6}
    teacher = {"task": teacher_task, "shared": teacher_shared}
    for layer in ("task", "shared"):
        states = torch.randn(2, 3, own[layer])
        projected = student.project(layer, states)
        if layer in expected:
            assert projected.shape == (2, 3, teacher[layer])
            assert student.projections[layer].in_features == own[layer]
            assert student.projections[layer].out_features == teacher[layer]
        else:
            assert projected is states
    # Projections are trained with the student: they are among its parameters.
    projection_parameters = {id(p) for p in student.projections.parameters()}
    assert projection_parameters <= {id(p) for p in student.parameters()}
    assert len(projection_parameters) == 2 * len(expected)


def test_a_transformer_teachers_encoder_layer_is_matched_by_the_projected_task_states():
    student = StudentModel(small_tagger(task_hidden=5), {"logits": K, "marginals": K, "encoder": 7}, ("logits", "encoder"))
    assert set(student.projections) == {"encoder"}
    assert (student.projections["encoder"].in_features, student.projections["encoder"].out_features) == (10, 7)
    states = torch.randn(2, 3, 10)
    expected = states @ student.projections["encoder"].weight.T + student.projections["encoder"].bias
    torch.testing.assert_close(student.project("encoder", states), expected)
    # Same width as the student's task states: no projection.
    same = StudentModel(small_tagger(task_hidden=5), {"logits": K, "encoder": 10}, ("logits", "encoder"))
    assert not len(same.projections)
