"""Distillation losses: pure functions of the student's output, the teacher's per-token targets
and the gold tags.

Every term is summed over real tokens and averaged over sentences, the same scale as the
hard-label term, so the weights mean what they say. Padding never contributes. A term whose
weight is zero is still computed for logging but kept out of the graph, so alpha=1 with every
other weight 0 trains exactly as the single-task model does.

Adding a loss is one function decorated with `@register(name, layers, weights, options)`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from kd.errors import FieldError, KdError
from kd.losses.supervised import hard_label_loss
from kd.models.crf import CRF
from kd.models.tagger import TaggerOutput
from kd.option_schema import add_loss_name


@dataclass(frozen=True)
class DistillWeights:
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 0.0
    kappa: float = 0.0
    tau: float = 1.0


@dataclass
class StudentView:
    """What a loss sees of the student: its output, its CRF (if any), and its hidden states
    projected to the teacher's sizes (identity when the sizes agree)."""

    output: TaggerOutput
    crf: CRF | None
    task_hidden: torch.Tensor
    shared_hidden: torch.Tensor
    encoder_hidden: torch.Tensor | None = None  # the task states projected to a transformer teacher's width


# (student, teacher targets {layer: (B, T, D)}, gold tags, weights) -> named terms, "loss" the total
LossFunction = Callable[[StudentView, Mapping[str, torch.Tensor], torch.Tensor, DistillWeights], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class RegisteredLoss:
    function: LossFunction
    layers: tuple[str, ...]  # the teacher layers it needs
    weights: tuple[tuple[str, str], ...] = ()  # (term, the DistillWeights field that weighs it)
    options: tuple[str, ...] = ()  # other DistillWeights fields the loss reads (tau)

    def term_weights(self, weights: DistillWeights) -> dict[str, float]:
        """{term: its weight in the total}, for plots and reports of what the loss is made of."""
        return {term: float(getattr(weights, field)) for term, field in self.weights}

    def defining_fields(self) -> tuple[str, ...]:
        """The DistillWeights fields that change what this loss trains: its weights, then its
        options; the others are ignored by it and do not tell two students apart."""
        return tuple(dict.fromkeys([field for _, field in self.weights] + list(self.options)))


LOSSES: dict[str, RegisteredLoss] = {}


def register(name: str, layers: Sequence[str], weights: Mapping[str, str] | None = None,
             options: Sequence[str] = ()) -> Callable[[LossFunction], LossFunction]:
    """`weights` declares which DistillWeights field weighs each term of the loss, `options` the
    other fields it reads."""
    def add(function: LossFunction) -> LossFunction:
        LOSSES[name] = RegisteredLoss(function, tuple(layers), tuple((weights or {}).items()), tuple(options))
        add_loss_name(name)
        return function
    return add


def get_loss(name: str) -> RegisteredLoss:
    if name not in LOSSES:
        raise FieldError("loss", name, f"use one of {', '.join(LOSSES)}")
    return LOSSES[name]


def check_loss_weights(loss: str, weights: DistillWeights) -> None:
    """The rules between a loss and its weights: gamma and kappa weigh only the terms of the losses
    that declare them, and some weight must be above zero."""
    declared = {field for _, field in get_loss(loss).weights}
    for name in ("gamma", "kappa"):
        if getattr(weights, name) and name not in declared:
            users = [other for other, registered in LOSSES.items() if name in dict(registered.weights).values()]
            raise FieldError(name, getattr(weights, name), f"applies to loss {' or '.join(users)}, not {loss}")
    if not any((weights.alpha, weights.beta, weights.gamma, weights.kappa)):
        raise KdError("all loss weights are zero: nothing to learn from")


def per_sentence(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over real tokens of a (B, T) tensor, averaged over sentences."""
    return torch.where(mask, token_values, torch.zeros_like(token_values)).sum() / mask.shape[0]


def real_tokens_only(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zeros at padding, so even a non-finite padded target cannot leak into a gradient."""
    return torch.where(mask.unsqueeze(2), values, torch.zeros((), dtype=values.dtype, device=values.device))


def mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the feature dimension, per token."""
    return per_sentence(((student.float() - real_tokens_only(teacher, mask)) ** 2).mean(dim=2), mask)


def soft_cross_entropy(target_probabilities: torch.Tensor, student_log_probabilities: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    return per_sentence(-(real_tokens_only(target_probabilities, mask) * student_log_probabilities).sum(dim=2), mask)


def weighted_total(terms: dict[str, torch.Tensor], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Adds `loss` = sum of weight * term over terms with a non-zero weight; zero-weight terms
    are detached so they add nothing to the graph."""
    total = None
    for name, weight in weights.items():
        if weight == 0:
            terms[name] = terms[name].detach()
            continue
        contribution = terms[name] if weight == 1 else weight * terms[name]
        total = contribution if total is None else total + contribution
    terms["loss"] = total if total is not None else sum(t for t in terms.values()) * 0.0
    return terms


def hard(student: StudentView, tags: torch.Tensor) -> torch.Tensor:
    return hard_label_loss(student.output, tags, student.crf)


@register("logits", layers=("logits",), weights={"hard": "alpha", "logits_mse": "beta"})
def logits_loss(student: StudentView, teacher: Mapping[str, torch.Tensor], tags: torch.Tensor,
                w: DistillWeights) -> dict[str, torch.Tensor]:
    """Eq. 2: alpha * CE(y, student) + beta * MSE(student logits, teacher logits)."""
    mask = student.output.mask
    terms = {"hard": hard(student, tags), "logits_mse": mse(student.output.logits, teacher["logits"], mask)}
    return weighted_total(terms, {"hard": w.alpha, "logits_mse": w.beta})


@register("intermediate", layers=("logits", "task", "shared"),
          weights={"hard": "alpha", "logits_mse": "beta", "task_mse": "gamma", "shared_mse": "kappa"})
def intermediate_loss(student: StudentView, teacher: Mapping[str, torch.Tensor], tags: torch.Tensor,
                      w: DistillWeights) -> dict[str, torch.Tensor]:
    """Eq. 3 and 4: eq. 2 + gamma * MSE(task BiLSTM outputs) + kappa * MSE(shared BiLSTM outputs)."""
    mask = student.output.mask
    terms = {"hard": hard(student, tags), "logits_mse": mse(student.output.logits, teacher["logits"], mask),
             "task_mse": mse(student.task_hidden, teacher["task"], mask),
             "shared_mse": mse(student.shared_hidden, teacher["shared"], mask)}
    return weighted_total(terms, {"hard": w.alpha, "logits_mse": w.beta, "task_mse": w.gamma, "shared_mse": w.kappa})


@register("encoder", layers=("logits", "encoder"), weights={"hard": "alpha", "logits_mse": "beta", "encoder_mse": "gamma"})
def encoder_loss(student: StudentView, teacher: Mapping[str, torch.Tensor], tags: torch.Tensor,
                 w: DistillWeights) -> dict[str, torch.Tensor]:
    """Eq. 3 for a transformer teacher: eq. 2 + gamma * MSE(the student's task BiLSTM states through its
    projection, the teacher's last hidden state at each word)."""
    mask = student.output.mask
    if student.encoder_hidden is None:
        raise KdError("--loss encoder: the student has no projection to the teacher's encoder layer")
    terms = {"hard": hard(student, tags), "logits_mse": mse(student.output.logits, teacher["logits"], mask),
             "encoder_mse": mse(student.encoder_hidden, teacher["encoder"], mask)}
    return weighted_total(terms, {"hard": w.alpha, "logits_mse": w.beta, "encoder_mse": w.gamma})


@register("soft", layers=("logits",), weights={"hard": "alpha", "soft_ce": "beta"}, options=("tau",))
def soft_loss(student: StudentView, teacher: Mapping[str, torch.Tensor], tags: torch.Tensor,
              w: DistillWeights) -> dict[str, torch.Tensor]:
    """Eq. 5: alpha * CE(y, student) + beta * CE(softmax(teacher / tau), softmax(student / tau))."""
    mask = student.output.mask
    targets = torch.softmax(real_tokens_only(teacher["logits"], mask) / w.tau, dim=2)
    log_probabilities = torch.log_softmax(student.output.logits.float() / w.tau, dim=2)
    terms = {"hard": hard(student, tags), "soft_ce": soft_cross_entropy(targets, log_probabilities, mask)}
    return weighted_total(terms, {"hard": w.alpha, "soft_ce": w.beta})


@register("kl", layers=("logits",), weights={"hard": "alpha", "kl": "beta"}, options=("tau",))
def kl_loss(student: StudentView, teacher: Mapping[str, torch.Tensor], tags: torch.Tensor,
            w: DistillWeights) -> dict[str, torch.Tensor]:
    """alpha * CE(y, student) + beta * tau^2 * KL(teacher / tau || student / tau) (Hinton et al.):
    tau^2 keeps the gradient scale independent of the temperature."""
    mask = student.output.mask
    teacher_log = torch.log_softmax(real_tokens_only(teacher["logits"], mask) / w.tau, dim=2)
    student_log = torch.log_softmax(student.output.logits.float() / w.tau, dim=2)
    kl = (teacher_log.exp() * (teacher_log - student_log)).sum(dim=2)
    terms = {"hard": hard(student, tags), "kl": (w.tau ** 2) * per_sentence(kl, mask)}
    return weighted_total(terms, {"hard": w.alpha, "kl": w.beta})


@register("marginals", layers=("marginals",), weights={"hard": "alpha", "marginals_ce": "beta"})
def marginals_loss(student: StudentView, teacher: Mapping[str, torch.Tensor], tags: torch.Tensor,
                   w: DistillWeights) -> dict[str, torch.Tensor]:
    """alpha * CE(y, student) + beta * CE(teacher token marginals, student token posteriors). The
    teacher's CRF marginals make token-level targets of a CRF teacher; the student's posteriors
    are its own CRF marginals for a CRF student, its softmax otherwise."""
    mask = student.output.mask
    logits = student.output.logits.float()
    if student.crf is not None:
        log_posteriors = torch.log(student.crf.marginals(logits, mask).clamp_min(1e-12))
    else:
        log_posteriors = torch.log_softmax(logits, dim=2)
    terms = {"hard": hard(student, tags), "marginals_ce": soft_cross_entropy(teacher["marginals"], log_posteriors, mask)}
    return weighted_total(terms, {"hard": w.alpha, "marginals_ce": w.beta})
