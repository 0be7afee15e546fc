"""Rewrite rules over the AST and the plan steps that shards execute."""
from .planner import plan
from .steps import Intersect, Nothing, Pred, Step, Union, Universe

__all__ = ["plan", "Step", "Universe", "Nothing", "Pred", "Intersect", "Union"]
