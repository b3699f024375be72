"""How a plan is scored. `estimate_training` is the analytical training cost model."""

from cost_models.training import estimate_training

COST_MODELS = {"analytical": estimate_training}

__all__ = ["COST_MODELS", "estimate_training"]
