"""How a plan is scored. `estimate_training` is the analytical training cost model."""

from cost_models.training import estimate_training

__all__ = ["estimate_training"]
