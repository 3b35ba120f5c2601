"""Generated from proto/clstream/v1/continual_learner.proto by proto/generate.py. Do not edit."""
from . import continual_learner_pb2, continual_learner_pb2_grpc

__all__ = ["continual_learner_pb2", "continual_learner_pb2_grpc"]
