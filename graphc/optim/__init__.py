"""Optimizers, learning-rate schedules, gradient clipping and weight penalties.

``gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)`` returns `updates` (variable -> new
value node) for `gc.compile`/`gc.reference`; optimizer state lives in graph variables, so
checkpoints carry it. Schedules (`gc.optim.schedules`, also re-exported here) set `opt.lr`
between steps without rebuilding anything; `SequentialLR` chains schedules (a warmup, then
any schedule).
"""

from graphc.optim import schedules
from graphc.optim.adam import Adam, Adamax, AdamW, NAdam, RAdam
from graphc.optim.base import Optimizer
from graphc.optim.clipping import clip_by_global_norm, clip_by_value, global_norm
from graphc.optim.cycles import CyclicLR, OneCycleLR
from graphc.optim.optimizers import SGD, Adadelta, Adagrad, RMSProp, RMSprop
from graphc.optim.penalties import l1_penalty, l2_penalty
from graphc.optim.schedules import (
    ConstantLR,
    CosineAnnealing,
    ExponentialDecay,
    LinearWarmup,
    MultiStepDecay,
    MultiStepLR,
    PiecewiseConstant,
    PolynomialDecay,
    ReduceOnPlateau,
    Schedule,
    SequentialLR,
    StepDecay,
)

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "ConstantLR",
    "CosineAnnealing",
    "CyclicLR",
    "ExponentialDecay",
    "LinearWarmup",
    "MultiStepDecay",
    "MultiStepLR",
    "NAdam",
    "OneCycleLR",
    "Optimizer",
    "PiecewiseConstant",
    "PolynomialDecay",
    "RAdam",
    "RMSProp",
    "RMSprop",
    "ReduceOnPlateau",
    "Schedule",
    "SequentialLR",
    "StepDecay",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
    "l1_penalty",
    "l2_penalty",
    "schedules",
]
