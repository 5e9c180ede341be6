"""The one Accelerate trainer, its recipe schema, schedule, optimizer policy and checkpoints."""

from .config import Recipe, load_recipe, recipe_from_dict
from .trainer import Trainer, train

__all__ = ["Recipe", "Trainer", "load_recipe", "recipe_from_dict", "train"]
