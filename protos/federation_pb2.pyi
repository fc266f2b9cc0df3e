from google.protobuf import descriptor_pb2 as _descriptor_pb2
from fedtl.protos import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    WEIGHT_DELTA: _ClassVar[UpdateKind]
    GRADIENT: _ClassVar[UpdateKind]
    STATISTICS: _ClassVar[UpdateKind]
UPDATE_KIND_UNSPECIFIED: UpdateKind
WEIGHT_DELTA: UpdateKind
GRADIENT: UpdateKind
STATISTICS: UpdateKind
PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
protocol_version: _descriptor.FieldDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol", "client_name", "partition_index", "partition_count", "info", "identity")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PARTITION_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    client_name: str
    partition_index: int
    partition_count: int
    info: ClientInfo
    identity: str
    def __init__(self, protocol: _Optional[str] = ..., client_name: _Optional[str] = ..., partition_index: _Optional[int] = ..., partition_count: _Optional[int] = ..., info: _Optional[_Union[ClientInfo, _Mapping]] = ..., identity: _Optional[str] = ...) -> None: ...

class ClientInfo(_message.Message):
    __slots__ = ("hostname", "device", "torch_version")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    device: str
    torch_version: str
    def __init__(self, hostname: _Optional[str] = ..., device: _Optional[str] = ..., torch_version: _Optional[str] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("welcome", "train", "finished", "secagg", "offer")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    train: TrainTask
    finished: Finished
    secagg: SecAggStep
    offer: JobOffer
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., train: _Optional[_Union[TrainTask, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ..., secagg: _Optional[_Union[SecAggStep, _Mapping]] = ..., offer: _Optional[_Union[JobOffer, _Mapping]] = ...) -> None: ...

class JobOffer(_message.Message):
    __slots__ = ("offer_id", "job_id", "kind", "model", "rounds", "local_epochs", "max_steps", "train_fn", "evaluate_fn", "dp_epsilon", "secure_aggregation", "statistics_epsilon", "data", "record_dp", "models", "collect_personal")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FN_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FN_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RECORD_DP_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    COLLECT_PERSONAL_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    job_id: str
    kind: str
    model: str
    rounds: int
    local_epochs: int
    max_steps: int
    train_fn: str
    evaluate_fn: str
    dp_epsilon: float
    secure_aggregation: bool
    statistics_epsilon: float
    data: DataAssignment
    record_dp: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelToEvaluate]
    collect_personal: bool
    def __init__(self, offer_id: _Optional[str] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., rounds: _Optional[int] = ..., local_epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., train_fn: _Optional[str] = ..., evaluate_fn: _Optional[str] = ..., dp_epsilon: _Optional[float] = ..., secure_aggregation: _Optional[bool] = ..., statistics_epsilon: _Optional[float] = ..., data: _Optional[_Union[DataAssignment, _Mapping]] = ..., record_dp: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelToEvaluate, _Mapping]]] = ..., collect_personal: _Optional[bool] = ...) -> None: ...

class ModelToEvaluate(_message.Message):
    __slots__ = ("name", "architecture", "sha256", "total_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    sha256: str
    total_bytes: int
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class JobAnswer(_message.Message):
    __slots__ = ("offer_id", "accept", "reason", "statistics", "evaluations", "personal_heads")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_HEADS_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    accept: bool
    reason: str
    statistics: SiteStatistics
    evaluations: _containers.RepeatedCompositeFieldContainer[SiteEvaluation]
    personal_heads: _containers.RepeatedCompositeFieldContainer[PersonalHead]
    def __init__(self, offer_id: _Optional[str] = ..., accept: _Optional[bool] = ..., reason: _Optional[str] = ..., statistics: _Optional[_Union[SiteStatistics, _Mapping]] = ..., evaluations: _Optional[_Iterable[_Union[SiteEvaluation, _Mapping]]] = ..., personal_heads: _Optional[_Iterable[_Union[PersonalHead, _Mapping]]] = ...) -> None: ...

class PersonalHead(_message.Message):
    __slots__ = ("model", "tensors")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    model: str
    tensors: bytes
    def __init__(self, model: _Optional[str] = ..., tensors: _Optional[bytes] = ...) -> None: ...

class SiteEvaluation(_message.Message):
    __slots__ = ("model", "loss", "accuracy", "examples")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    model: str
    loss: float
    accuracy: float
    examples: int
    def __init__(self, model: _Optional[str] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., examples: _Optional[int] = ...) -> None: ...

class SiteStatistics(_message.Message):
    __slots__ = ("examples", "class_names", "counts")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    examples: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, examples: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[float]] = ...) -> None: ...

class JobAnswerAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobSubmission(_message.Message):
    __slots__ = ("flags", "toml")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TOML_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedScalarFieldContainer[str]
    toml: str
    def __init__(self, flags: _Optional[_Iterable[str]] = ..., toml: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "kind", "state", "detail", "submitted", "started", "ended", "rounds", "folder")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    state: str
    detail: str
    submitted: float
    started: float
    ended: float
    rounds: int
    folder: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., submitted: _Optional[float] = ..., started: _Optional[float] = ..., ended: _Optional[float] = ..., rounds: _Optional[int] = ..., folder: _Optional[str] = ...) -> None: ...

class JobListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class JobLogsRequest(_message.Message):
    __slots__ = ("job_id", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class JobLogLine(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "run_id", "recipe", "data")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    recipe: ModelRecipe
    data: DataAssignment
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., recipe: _Optional[_Union[ModelRecipe, _Mapping]] = ..., data: _Optional[_Union[DataAssignment, _Mapping]] = ...) -> None: ...

class ModelRecipe(_message.Message):
    __slots__ = ("model", "num_classes", "image_size", "mean", "std", "train_policy", "client_local", "class_names")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    TRAIN_POLICY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LOCAL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    num_classes: int
    image_size: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    train_policy: str
    client_local: _containers.RepeatedScalarFieldContainer[str]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., num_classes: _Optional[int] = ..., image_size: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., train_policy: _Optional[str] = ..., client_local: _Optional[_Iterable[str]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class DataAssignment(_message.Message):
    __slots__ = ("partition_index", "partition_count", "scheme", "alpha", "classes_per_client", "seed", "holdout_fraction", "per_class_limit")
    PARTITION_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    CLASSES_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    partition_index: int
    partition_count: int
    scheme: str
    alpha: float
    classes_per_client: int
    seed: int
    holdout_fraction: float
    per_class_limit: int
    def __init__(self, partition_index: _Optional[int] = ..., partition_count: _Optional[int] = ..., scheme: _Optional[str] = ..., alpha: _Optional[float] = ..., classes_per_client: _Optional[int] = ..., seed: _Optional[int] = ..., holdout_fraction: _Optional[float] = ..., per_class_limit: _Optional[int] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("algorithm", "local_epochs", "batch_size", "lr", "momentum", "weight_decay", "proximal_mu", "max_steps", "augment", "seed", "feature_cache", "personal_epochs", "dp_clip", "dp_noise", "dp_epsilon", "dp_delta", "dp_rounds", "dp_accountant", "train_fn", "evaluate_fn", "statistics", "feature_clip")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CACHE_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DP_DELTA_FIELD_NUMBER: _ClassVar[int]
    DP_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DP_ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FN_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FN_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CLIP_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    proximal_mu: float
    max_steps: int
    augment: bool
    seed: int
    feature_cache: str
    personal_epochs: int
    dp_clip: float
    dp_noise: float
    dp_epsilon: float
    dp_delta: float
    dp_rounds: int
    dp_accountant: str
    train_fn: str
    evaluate_fn: str
    statistics: str
    feature_clip: float
    def __init__(self, algorithm: _Optional[str] = ..., local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., proximal_mu: _Optional[float] = ..., max_steps: _Optional[int] = ..., augment: _Optional[bool] = ..., seed: _Optional[int] = ..., feature_cache: _Optional[str] = ..., personal_epochs: _Optional[int] = ..., dp_clip: _Optional[float] = ..., dp_noise: _Optional[float] = ..., dp_epsilon: _Optional[float] = ..., dp_delta: _Optional[float] = ..., dp_rounds: _Optional[int] = ..., dp_accountant: _Optional[str] = ..., train_fn: _Optional[str] = ..., evaluate_fn: _Optional[str] = ..., statistics: _Optional[str] = ..., feature_clip: _Optional[float] = ...) -> None: ...

class SegmentRef(_message.Message):
    __slots__ = ("name", "sha256", "total_bytes", "encoding", "base")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    total_bytes: int
    encoding: str
    base: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., encoding: _Optional[str] = ..., base: _Optional[str] = ...) -> None: ...

class TrainTask(_message.Message):
    __slots__ = ("round", "segments", "base_digest", "config", "data", "evaluate", "deadline_seconds", "update_encoding", "secagg", "validated")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    VALIDATED_FIELD_NUMBER: _ClassVar[int]
    round: int
    segments: _containers.RepeatedCompositeFieldContainer[SegmentRef]
    base_digest: str
    config: TrainConfig
    data: DataAssignment
    evaluate: bool
    deadline_seconds: float
    update_encoding: str
    secagg: SecAggSetup
    validated: ValidatedSetup
    def __init__(self, round: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[SegmentRef, _Mapping]]] = ..., base_digest: _Optional[str] = ..., config: _Optional[_Union[TrainConfig, _Mapping]] = ..., data: _Optional[_Union[DataAssignment, _Mapping]] = ..., evaluate: _Optional[bool] = ..., deadline_seconds: _Optional[float] = ..., update_encoding: _Optional[str] = ..., secagg: _Optional[_Union[SecAggSetup, _Mapping]] = ..., validated: _Optional[_Union[ValidatedSetup, _Mapping]] = ...) -> None: ...

class ValidatedShape(_message.Message):
    __slots__ = ("coordinates", "bits", "bound")
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    coordinates: int
    bits: int
    bound: int
    def __init__(self, coordinates: _Optional[int] = ..., bits: _Optional[int] = ..., bound: _Optional[int] = ...) -> None: ...

class ValidatedSetup(_message.Message):
    __slots__ = ("shape", "clip", "helper")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    HELPER_FIELD_NUMBER: _ClassVar[int]
    shape: ValidatedShape
    clip: float
    helper: str
    def __init__(self, shape: _Optional[_Union[ValidatedShape, _Mapping]] = ..., clip: _Optional[float] = ..., helper: _Optional[str] = ...) -> None: ...

class HelperDeposit(_message.Message):
    __slots__ = ("round", "client_name", "seed")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    round: int
    client_name: str
    seed: bytes
    def __init__(self, round: _Optional[int] = ..., client_name: _Optional[str] = ..., seed: _Optional[bytes] = ...) -> None: ...

class HelperAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HelperBind(_message.Message):
    __slots__ = ("round", "shape", "clients")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    shape: ValidatedShape
    clients: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., shape: _Optional[_Union[ValidatedShape, _Mapping]] = ..., clients: _Optional[_Iterable[str]] = ...) -> None: ...

class HelperBindings(_message.Message):
    __slots__ = ("bindings",)
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    bindings: _containers.ScalarMap[str, bytes]
    def __init__(self, bindings: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class HelperOpen(_message.Message):
    __slots__ = ("round", "challenge_seed", "clients")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_SEED_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    challenge_seed: bytes
    clients: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., challenge_seed: _Optional[bytes] = ..., clients: _Optional[_Iterable[str]] = ...) -> None: ...

class HelperOpenings(_message.Message):
    __slots__ = ("openings",)
    class OpeningsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    OPENINGS_FIELD_NUMBER: _ClassVar[int]
    openings: _containers.ScalarMap[str, bytes]
    def __init__(self, openings: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class HelperSum(_message.Message):
    __slots__ = ("round", "clients", "weights")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    clients: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round: _Optional[int] = ..., clients: _Optional[_Iterable[str]] = ..., weights: _Optional[_Iterable[int]] = ...) -> None: ...

class HelperShareSum(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: bytes
    def __init__(self, values: _Optional[bytes] = ...) -> None: ...

class SecAggSetup(_message.Message):
    __slots__ = ("participants", "threshold", "degree", "graph_seed", "bits", "clip", "max_weight", "attempt", "modulus_bits", "dp_noise")
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    degree: int
    graph_seed: bytes
    bits: int
    clip: float
    max_weight: int
    attempt: int
    modulus_bits: int
    dp_noise: float
    def __init__(self, participants: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., degree: _Optional[int] = ..., graph_seed: _Optional[bytes] = ..., bits: _Optional[int] = ..., clip: _Optional[float] = ..., max_weight: _Optional[int] = ..., attempt: _Optional[int] = ..., modulus_bits: _Optional[int] = ..., dp_noise: _Optional[float] = ...) -> None: ...

class PublicKeys(_message.Message):
    __slots__ = ("client", "encryption_key", "mask_key", "seed_commitment")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    client: str
    encryption_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    def __init__(self, client: _Optional[str] = ..., encryption_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ...) -> None: ...

class SealedShares(_message.Message):
    __slots__ = ("sender", "receiver", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ConsistencyTag(_message.Message):
    __slots__ = ("sender", "receiver", "tag")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    tag: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., tag: _Optional[bytes] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    share: bytes
    def __init__(self, owner: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggStep(_message.Message):
    __slots__ = ("round", "phase", "keys", "shares", "survivors", "dropped", "tags")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    round: int
    phase: str
    keys: _containers.RepeatedCompositeFieldContainer[PublicKeys]
    shares: _containers.RepeatedCompositeFieldContainer[SealedShares]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedCompositeFieldContainer[ConsistencyTag]
    def __init__(self, round: _Optional[int] = ..., phase: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[PublicKeys, _Mapping]]] = ..., shares: _Optional[_Iterable[_Union[SealedShares, _Mapping]]] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[_Union[ConsistencyTag, _Mapping]]] = ...) -> None: ...

class SecAggMessage(_message.Message):
    __slots__ = ("session_id", "round", "phase", "keys", "shares", "tags", "seed_shares", "key_shares", "withdraw")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    phase: str
    keys: PublicKeys
    shares: _containers.RepeatedCompositeFieldContainer[SealedShares]
    tags: _containers.RepeatedCompositeFieldContainer[ConsistencyTag]
    seed_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    withdraw: str
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., phase: _Optional[str] = ..., keys: _Optional[_Union[PublicKeys, _Mapping]] = ..., shares: _Optional[_Iterable[_Union[SealedShares, _Mapping]]] = ..., tags: _Optional[_Iterable[_Union[ConsistencyTag, _Mapping]]] = ..., seed_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., withdraw: _Optional[str] = ...) -> None: ...

class SecAggAck(_message.Message):
    __slots__ = ("detail",)
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    detail: str
    def __init__(self, detail: _Optional[str] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GoodbyeAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Finished(_message.Message):
    __slots__ = ("reason", "failed", "resume", "standing")
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    STANDING_FIELD_NUMBER: _ClassVar[int]
    reason: str
    failed: bool
    resume: bool
    standing: bool
    def __init__(self, reason: _Optional[str] = ..., failed: _Optional[bool] = ..., resume: _Optional[bool] = ..., standing: _Optional[bool] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("session_id", "sha256")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sha256: str
    def __init__(self, session_id: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ClientMetrics(_message.Message):
    __slots__ = ("train_loss", "train_accuracy", "train_seconds", "steps", "eval_loss", "eval_accuracy", "eval_examples", "personal_train_loss", "personal_seconds", "personal_accuracy", "download_seconds", "feature_cache", "cache_build_seconds_train", "cache_build_seconds_holdout", "epsilon", "dp_noise", "custom")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CACHE_FIELD_NUMBER: _ClassVar[int]
    CACHE_BUILD_SECONDS_TRAIN_FIELD_NUMBER: _ClassVar[int]
    CACHE_BUILD_SECONDS_HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    train_loss: float
    train_accuracy: float
    train_seconds: float
    steps: int
    eval_loss: float
    eval_accuracy: float
    eval_examples: int
    personal_train_loss: float
    personal_seconds: float
    personal_accuracy: float
    download_seconds: float
    feature_cache: bool
    cache_build_seconds_train: float
    cache_build_seconds_holdout: float
    epsilon: float
    dp_noise: float
    custom: _containers.ScalarMap[str, float]
    def __init__(self, train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., train_seconds: _Optional[float] = ..., steps: _Optional[int] = ..., eval_loss: _Optional[float] = ..., eval_accuracy: _Optional[float] = ..., eval_examples: _Optional[int] = ..., personal_train_loss: _Optional[float] = ..., personal_seconds: _Optional[float] = ..., personal_accuracy: _Optional[float] = ..., download_seconds: _Optional[float] = ..., feature_cache: _Optional[bool] = ..., cache_build_seconds_train: _Optional[float] = ..., cache_build_seconds_holdout: _Optional[float] = ..., epsilon: _Optional[float] = ..., dp_noise: _Optional[float] = ..., custom: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("session_id", "round", "base_digest", "num_examples", "kind", "manifest", "encoding", "metrics")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    base_digest: str
    num_examples: int
    kind: UpdateKind
    manifest: _tensors_pb2.BlobManifest
    encoding: str
    metrics: ClientMetrics
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., base_digest: _Optional[str] = ..., num_examples: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., manifest: _Optional[_Union[_tensors_pb2.BlobManifest, _Mapping]] = ..., encoding: _Optional[str] = ..., metrics: _Optional[_Union[ClientMetrics, _Mapping]] = ...) -> None: ...

class UploadMessage(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...
