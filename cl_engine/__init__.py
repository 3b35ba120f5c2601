"""clstream's learning core: models, strategies, replay memory, metrics and streams. No gRPC inside."""
from .config import LearnerConfig
from .learner import Learner, StepResult
from .run import run_stream
from .streams import Stream, StreamOptions, build_stream

__all__ = ["Learner", "LearnerConfig", "StepResult", "Stream", "StreamOptions", "build_stream", "run_stream"]
