from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_UINT8: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType

class RollbackRequest(_message.Message):
    __slots__ = ("to_version",)
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    to_version: int
    def __init__(self, to_version: _Optional[int] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("model_version", "open_bucket", "checkpoint", "durable")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPEN_BUCKET_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    open_bucket: int
    checkpoint: str
    durable: bool
    def __init__(self, model_version: _Optional[int] = ..., open_bucket: _Optional[int] = ..., checkpoint: _Optional[str] = ..., durable: _Optional[bool] = ...) -> None: ...

class Schema(_message.Message):
    __slots__ = ("class_names", "input_shape", "value_min", "value_max")
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_MIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAX_FIELD_NUMBER: _ClassVar[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    value_min: float
    value_max: float
    def __init__(self, class_names: _Optional[_Iterable[str]] = ..., input_shape: _Optional[_Iterable[int]] = ..., value_min: _Optional[float] = ..., value_max: _Optional[float] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodedImages(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Samples(_message.Message):
    __slots__ = ("tensor", "images")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    images: EncodedImages
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., images: _Optional[_Union[EncodedImages, _Mapping]] = ...) -> None: ...

class TrainBatch(_message.Message):
    __slots__ = ("stream_id", "sequence", "bucket", "samples", "labels", "schema", "sample_ids", "bucket_batches")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BATCHES_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence: int
    bucket: int
    samples: Samples
    labels: _containers.RepeatedScalarFieldContainer[int]
    schema: Schema
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    bucket_batches: int
    def __init__(self, stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., bucket: _Optional[int] = ..., samples: _Optional[_Union[Samples, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., schema: _Optional[_Union[Schema, _Mapping]] = ..., sample_ids: _Optional[_Iterable[int]] = ..., bucket_batches: _Optional[int] = ...) -> None: ...

class TrainAck(_message.Message):
    __slots__ = ("stream_id", "sequence", "applied", "duplicate", "accuracy", "loss", "model_version", "samples_trained", "applied_sequence", "durable_sequence", "learned", "skip_reason")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence: int
    applied: bool
    duplicate: bool
    accuracy: float
    loss: float
    model_version: int
    samples_trained: int
    applied_sequence: int
    durable_sequence: int
    learned: bool
    skip_reason: str
    def __init__(self, stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., applied: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., model_version: _Optional[int] = ..., samples_trained: _Optional[int] = ..., applied_sequence: _Optional[int] = ..., durable_sequence: _Optional[int] = ..., learned: _Optional[bool] = ..., skip_reason: _Optional[str] = ...) -> None: ...

class EndBucketRequest(_message.Message):
    __slots__ = ("bucket", "bucket_size", "expected_sequences")
    class ExpectedSequencesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    BUCKET_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    bucket: int
    bucket_size: int
    expected_sequences: _containers.ScalarMap[str, int]
    def __init__(self, bucket: _Optional[int] = ..., bucket_size: _Optional[int] = ..., expected_sequences: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AccuracyRow(_message.Message):
    __slots__ = ("accuracy",)
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    accuracy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, accuracy: _Optional[_Iterable[float]] = ...) -> None: ...

class LearningMetrics(_message.Message):
    __slots__ = ("acc", "bwt", "fwt", "forgetting", "in_domain", "next_domain", "clear_acc", "clear_bwt", "clear_fwt", "clear_score")
    ACC_FIELD_NUMBER: _ClassVar[int]
    BWT_FIELD_NUMBER: _ClassVar[int]
    FWT_FIELD_NUMBER: _ClassVar[int]
    FORGETTING_FIELD_NUMBER: _ClassVar[int]
    IN_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    NEXT_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CLEAR_ACC_FIELD_NUMBER: _ClassVar[int]
    CLEAR_BWT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FWT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_SCORE_FIELD_NUMBER: _ClassVar[int]
    acc: float
    bwt: float
    fwt: float
    forgetting: float
    in_domain: float
    next_domain: float
    clear_acc: float
    clear_bwt: float
    clear_fwt: float
    clear_score: float
    def __init__(self, acc: _Optional[float] = ..., bwt: _Optional[float] = ..., fwt: _Optional[float] = ..., forgetting: _Optional[float] = ..., in_domain: _Optional[float] = ..., next_domain: _Optional[float] = ..., clear_acc: _Optional[float] = ..., clear_bwt: _Optional[float] = ..., clear_fwt: _Optional[float] = ..., clear_score: _Optional[float] = ...) -> None: ...

class EndBucketResponse(_message.Message):
    __slots__ = ("bucket", "row", "metrics", "model_version", "open_bucket", "already_ended", "checkpoint", "durable")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPEN_BUCKET_FIELD_NUMBER: _ClassVar[int]
    ALREADY_ENDED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    bucket: int
    row: AccuracyRow
    metrics: LearningMetrics
    model_version: int
    open_bucket: int
    already_ended: bool
    checkpoint: str
    durable: bool
    def __init__(self, bucket: _Optional[int] = ..., row: _Optional[_Union[AccuracyRow, _Mapping]] = ..., metrics: _Optional[_Union[LearningMetrics, _Mapping]] = ..., model_version: _Optional[int] = ..., open_bucket: _Optional[int] = ..., already_ended: _Optional[bool] = ..., checkpoint: _Optional[str] = ..., durable: _Optional[bool] = ...) -> None: ...

class EvalSetChunk(_message.Message):
    __slots__ = ("bucket", "samples", "labels", "schema")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    bucket: int
    samples: Samples
    labels: _containers.RepeatedScalarFieldContainer[int]
    schema: Schema
    def __init__(self, bucket: _Optional[int] = ..., samples: _Optional[_Union[Samples, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., schema: _Optional[_Union[Schema, _Mapping]] = ...) -> None: ...

class RegisterEvalSetResponse(_message.Message):
    __slots__ = ("bucket", "num_samples", "already_registered", "registered_buckets")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    bucket: int
    num_samples: int
    already_registered: bool
    registered_buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bucket: _Optional[int] = ..., num_samples: _Optional[int] = ..., already_registered: _Optional[bool] = ..., registered_buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("samples", "top_k", "labels")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    samples: Samples
    top_k: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, samples: _Optional[_Union[Samples, _Mapping]] = ..., top_k: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "class_name", "top_labels", "top_probabilities")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    TOP_LABELS_FIELD_NUMBER: _ClassVar[int]
    TOP_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    label: int
    class_name: str
    top_labels: _containers.RepeatedScalarFieldContainer[int]
    top_probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[int] = ..., class_name: _Optional[str] = ..., top_labels: _Optional[_Iterable[int]] = ..., top_probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions", "model_version")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    model_version: int
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class EvaluateChunk(_message.Message):
    __slots__ = ("samples", "labels")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    samples: Samples
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, samples: _Optional[_Union[Samples, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("correct", "total", "accuracy", "loss", "model_version")
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    correct: int
    total: int
    accuracy: float
    loss: float
    model_version: int
    def __init__(self, correct: _Optional[int] = ..., total: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., model_version: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForgetStreamRequest(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...

class ForgetStreamResponse(_message.Message):
    __slots__ = ("stream_id", "forgotten", "sequence", "streams_known")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STREAMS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    forgotten: bool
    sequence: int
    streams_known: int
    def __init__(self, stream_id: _Optional[str] = ..., forgotten: _Optional[bool] = ..., sequence: _Optional[int] = ..., streams_known: _Optional[int] = ...) -> None: ...

class BufferStatus(_message.Message):
    __slots__ = ("size", "capacity", "bytes", "by_bucket", "by_class", "asked_by_bucket", "bounded")
    class ByBucketEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ByClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class AskedByBucketEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BY_BUCKET_FIELD_NUMBER: _ClassVar[int]
    BY_CLASS_FIELD_NUMBER: _ClassVar[int]
    ASKED_BY_BUCKET_FIELD_NUMBER: _ClassVar[int]
    BOUNDED_FIELD_NUMBER: _ClassVar[int]
    size: int
    capacity: int
    bytes: int
    by_bucket: _containers.ScalarMap[int, int]
    by_class: _containers.ScalarMap[int, int]
    asked_by_bucket: _containers.ScalarMap[int, int]
    bounded: bool
    def __init__(self, size: _Optional[int] = ..., capacity: _Optional[int] = ..., bytes: _Optional[int] = ..., by_bucket: _Optional[_Mapping[int, int]] = ..., by_class: _Optional[_Mapping[int, int]] = ..., asked_by_bucket: _Optional[_Mapping[int, int]] = ..., bounded: _Optional[bool] = ...) -> None: ...

class DriftStatus(_message.Message):
    __slots__ = ("statistic", "threshold", "events", "last_event_version")
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    statistic: float
    threshold: float
    events: int
    last_event_version: int
    def __init__(self, statistic: _Optional[float] = ..., threshold: _Optional[float] = ..., events: _Optional[int] = ..., last_event_version: _Optional[int] = ...) -> None: ...

class PromotionStatus(_message.Message):
    __slots__ = ("enabled", "promotions", "rejections", "canary_accuracy", "serving_canary_accuracy", "last_rejection")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    CANARY_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SERVING_CANARY_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LAST_REJECTION_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    promotions: int
    rejections: int
    canary_accuracy: float
    serving_canary_accuracy: float
    last_rejection: str
    def __init__(self, enabled: _Optional[bool] = ..., promotions: _Optional[int] = ..., rejections: _Optional[int] = ..., canary_accuracy: _Optional[float] = ..., serving_canary_accuracy: _Optional[float] = ..., last_rejection: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("has_model", "schema", "model_version", "serving_version", "open_bucket", "samples_trained", "batches_trained", "prequential_accuracy", "prequential_accuracy_overall", "accuracy_matrix", "initial_accuracy", "metrics", "forgetting_per_bucket", "buffer", "gem_projections", "qp_fallbacks", "applied_sequences", "eval_buckets", "queue_depth", "queue_capacity", "drift", "last_checkpoint", "last_checkpoint_time", "config_json", "batches_since_checkpoint", "checkpoint_error", "durable_sequences", "skipped_steps", "promotion", "rollback_versions")
    class AppliedSequencesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DurableSequencesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SkippedStepsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HAS_MODEL_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPEN_BUCKET_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    PREQUENTIAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PREQUENTIAL_ACCURACY_OVERALL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_MATRIX_FIELD_NUMBER: _ClassVar[int]
    INITIAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FORGETTING_PER_BUCKET_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    GEM_PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    QP_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    EVAL_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_TIME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SINCE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    has_model: bool
    schema: Schema
    model_version: int
    serving_version: int
    open_bucket: int
    samples_trained: int
    batches_trained: int
    prequential_accuracy: float
    prequential_accuracy_overall: float
    accuracy_matrix: _containers.RepeatedCompositeFieldContainer[AccuracyRow]
    initial_accuracy: AccuracyRow
    metrics: LearningMetrics
    forgetting_per_bucket: _containers.RepeatedScalarFieldContainer[float]
    buffer: BufferStatus
    gem_projections: int
    qp_fallbacks: int
    applied_sequences: _containers.ScalarMap[str, int]
    eval_buckets: _containers.RepeatedScalarFieldContainer[int]
    queue_depth: int
    queue_capacity: int
    drift: DriftStatus
    last_checkpoint: str
    last_checkpoint_time: float
    config_json: str
    batches_since_checkpoint: int
    checkpoint_error: str
    durable_sequences: _containers.ScalarMap[str, int]
    skipped_steps: _containers.ScalarMap[str, int]
    promotion: PromotionStatus
    rollback_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, has_model: _Optional[bool] = ..., schema: _Optional[_Union[Schema, _Mapping]] = ..., model_version: _Optional[int] = ..., serving_version: _Optional[int] = ..., open_bucket: _Optional[int] = ..., samples_trained: _Optional[int] = ..., batches_trained: _Optional[int] = ..., prequential_accuracy: _Optional[float] = ..., prequential_accuracy_overall: _Optional[float] = ..., accuracy_matrix: _Optional[_Iterable[_Union[AccuracyRow, _Mapping]]] = ..., initial_accuracy: _Optional[_Union[AccuracyRow, _Mapping]] = ..., metrics: _Optional[_Union[LearningMetrics, _Mapping]] = ..., forgetting_per_bucket: _Optional[_Iterable[float]] = ..., buffer: _Optional[_Union[BufferStatus, _Mapping]] = ..., gem_projections: _Optional[int] = ..., qp_fallbacks: _Optional[int] = ..., applied_sequences: _Optional[_Mapping[str, int]] = ..., eval_buckets: _Optional[_Iterable[int]] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., drift: _Optional[_Union[DriftStatus, _Mapping]] = ..., last_checkpoint: _Optional[str] = ..., last_checkpoint_time: _Optional[float] = ..., config_json: _Optional[str] = ..., batches_since_checkpoint: _Optional[int] = ..., checkpoint_error: _Optional[str] = ..., durable_sequences: _Optional[_Mapping[str, int]] = ..., skipped_steps: _Optional[_Mapping[str, int]] = ..., promotion: _Optional[_Union[PromotionStatus, _Mapping]] = ..., rollback_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class WatchModelRequest(_message.Message):
    __slots__ = ("have_learner_id", "have_version")
    HAVE_LEARNER_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    have_learner_id: str
    have_version: int
    def __init__(self, have_learner_id: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("model_version", "learner_id", "offset", "total_bytes", "weights", "schema", "model", "published_time", "latest_version", "latest_published_time")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LEARNER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_PUBLISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    learner_id: str
    offset: int
    total_bytes: int
    weights: bytes
    schema: Schema
    model: str
    published_time: float
    latest_version: int
    latest_published_time: float
    def __init__(self, model_version: _Optional[int] = ..., learner_id: _Optional[str] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., weights: _Optional[bytes] = ..., schema: _Optional[_Union[Schema, _Mapping]] = ..., model: _Optional[str] = ..., published_time: _Optional[float] = ..., latest_version: _Optional[int] = ..., latest_published_time: _Optional[float] = ...) -> None: ...
