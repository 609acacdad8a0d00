"""Training recipe pieces MONAI lacks: the deep-supervision loss factory and output selection."""

from __future__ import annotations

from eunets_monai.engine.losses import LOSSES, BCEDiceLoss, CrossEntropyLoss, EUDeepSupervisionLoss, get_loss
from eunets_monai.engine.outputs import final_output

__all__ = ["LOSSES", "CrossEntropyLoss", "BCEDiceLoss", "EUDeepSupervisionLoss", "get_loss", "final_output"]
