"""One forward pass before training starts, so an image size the model cannot take is a one-line error.

A model that cannot take the requested size fails deep inside its forward (a patch embedding that needs
a multiple of 16, a padding larger than the feature map): the training command would show a traceback
after building everything. :func:`check_input_fits` runs the data pipeline on one sample and the model
on a batch of two in eval mode, without gradients and without touching any random generator, and turns a
failure into :class:`~ctxnets_shared.training.errors.InputSizeError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ctxnets_shared.training.errors import InputSizeError

__all__ = ["check_input_fits"]


def check_input_fits(model: nn.Module, make_inputs: Callable[[], Sequence[torch.Tensor]], what: str) -> None:
    """Run ``model(*make_inputs())`` once in eval mode; raise InputSizeError naming ``what`` if it fails.

    Args:
        model: the model (its train/eval mode is restored; BatchNorm statistics are not touched).
        make_inputs: builds the input tensors (e.g. two augmented samples stacked), so that a transform
            that cannot produce the size fails here too.
        what: the setting to blame, e.g. ``"--img-size 30"``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(*make_inputs())
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as e:
        text = str(e).strip().splitlines()
        raise InputSizeError(
            f"{what} does not fit {type(model).__name__}: {text[0] if text else type(e).__name__}"
        ) from e
    finally:
        model.train(was_training)
