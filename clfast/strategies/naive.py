"""``Naive``: plain fine-tuning on each experience (Avalanche's baseline), the template with no extra logic."""

from __future__ import annotations

from ..training.templates import SupervisedTemplate


class Naive(SupervisedTemplate):
    """Fine-tunes the model on each experience in turn, with no protection against forgetting.

    Arguments are those of :class:`clfast.training.SupervisedTemplate`, with Avalanche's defaults:
    ``Naive(model, optimizer, criterion=CrossEntropyLoss(), train_mb_size=1, train_epochs=1, eval_mb_size=None,
    device=None, plugins=None, evaluator=default_evaluator, eval_every=-1, peval_mode="epoch")``.
    Plugins (e.g. a regulariser) turn it into other methods.
    """
