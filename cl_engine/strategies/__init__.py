"""Update rules, one file each: naive, replay, gem, agem."""
from .agem import AGEM
from .base import Context, StepOutput, Strategy
from .gem import GEM
from .naive import Naive
from .replay import Replay

STRATEGIES = {s.name: s for s in (Naive, Replay, GEM, AGEM)}

__all__ = ["AGEM", "GEM", "Naive", "Replay", "Context", "StepOutput", "Strategy", "STRATEGIES"]
