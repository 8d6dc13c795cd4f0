"""Training configuration: a typed, validated tree read from YAML (configs/train/*.yaml).

The whole config is logged with every MLflow run, so any registered model can be rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from eldefect.preprocess import InputSpec

SelectionMetric = Literal["val_macro_ap", "val_macro_recall", "val_macro_f1"]
Precision = Literal["auto", "fp32", "bf16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


CellType = Literal["mono", "poly"]


class DataSource(_Strict):
    """A further labelled folder trained on beside the main one (same label set)."""

    format: Literal["voc", "elpv"] = "voc"
    root: Path
    cell_type: CellType | None = Field(None, description="ELPV: only this cell type.")


class DataConfig(_Strict):
    format: Literal["voc", "elpv", "synthetic"] = "voc"
    root: Path | None = Field(None, description="Dataset folder; --data overrides it.")
    cell_type: CellType | None = Field(None, description="ELPV: only this cell type.")
    sources: list[DataSource] = Field(
        default_factory=list,
        description="More folders, e.g. exported operator reviews (`eldefect dataset "
        "export-reviews`); their images join the split like the main folder's.",
    )
    labels: str = Field("pvel_ad", description="Shipped label set name or a YAML path.")
    ignore_unknown_labels: bool = False
    missing_annotation: Literal["skip", "negative"] = "skip"
    soft_targets: bool = Field(
        False,
        description="Train on the labellers' confidence where the dataset records one (ELPV: "
        "the expert's defect probability, 0, 1/3, 2/3 or 1) instead of the 0/1 target; "
        "validation, thresholds and metrics always score the 0/1 target.",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    # Cross-validation: validate on fold `fold` of `folds` stratified folds (val_fraction is
    # then unused). `eldefect train --cv K` sets both for each of its K runs.
    folds: int | None = Field(None, ge=2, description="Stratified folds; None: one split.")
    fold: int = Field(0, ge=0, description="The fold validated on when folds are set.")
    # format: synthetic writes a dataset first (tests, demo) with these:
    synthetic_n: int = Field(600, ge=10)
    synthetic_size: int = Field(160, ge=32)
    synthetic_classes: list[str] | None = None

    @model_validator(mode="after")
    def _fold_exists(self) -> DataConfig:
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"data.fold {self.fold} does not exist with {self.folds} folds")
        return self


class ModelConfig(_Strict):
    arch: Literal["cnn", "resnet18"] = "cnn"
    width: int = Field(32, ge=4, description="CNN stem channels (doubled per block).")
    depth: int = Field(3, ge=1, le=6, description="CNN blocks after the stem.")
    dropout: float = Field(0.0, ge=0, lt=1)
    # A stride-4 stem reads a 448 px input at full resolution and hands the residual stages
    # the feature maps a stride-2 stem makes from 224 px: thin cracks reach the first
    # convolution unblurred for about the same compute.
    stem_stride: Literal[2, 4] = Field(2, description="ResNet: stride of the first convolution.")


class InputConfig(_Strict):
    size: int = Field(224, ge=32, description="Square side the image is resized to.")
    mean: float = 0.5
    std: float = Field(0.25, gt=0)
    standardize: bool = Field(
        False,
        description="Normalise each image by its own mean and std instead of mean/std above, "
        "so a cell's overall brightness and contrast (exposure, station, cell type) carry no "
        "signal; the model card records it and serving does the same.",
    )

    def spec(self) -> InputSpec:
        from eldefect.preprocess import InputSpec  # torch: not for the gateway's imports

        return InputSpec(self.size, self.mean, self.std, self.standardize)


class AugmentConfig(_Strict):
    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    quarter_turn: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of a 90-degree turn either way; only for label sets whose "
        "classes have no orientation (not horizontal_ vs vertical_dislocation).",
    )
    paste: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="Defect copy-paste, class -> probability: a training image gets the "
        "boxes of that class from another training image, pasted at the same place, and "
        "the class. For rare classes of VOC data whose images share one geometry.",
    )
    rotate_degrees: float = Field(5.0, ge=0)
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    gamma: float = Field(0.2, ge=0, lt=1)


class OptimConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    max_pos_weight: float = Field(10.0, ge=1)
    patience: int = Field(6, ge=1, description="Epochs without improvement before stopping.")
    min_epochs: int = Field(1, ge=1)
    selection_metric: SelectionMetric = "val_macro_ap"
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; None: all cores.")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Wall-time budget of the epochs: after each one, the schedule is shortened "
        "to the epochs that fit at the pace so far, so the learning rate still decays to zero.",
    )
    precision: Precision = Field(
        "auto",
        description="Autocast dtype of the forward pass; auto: bf16 where it is faster (AMX "
        "CPUs, AMD CPUs with AVX512-BF16, CUDA), fp32 elsewhere.",
    )
    # A per-step decay: with ~20 steps an epoch, 0.99 averages over the last ~5 epochs.
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights; it is what is "
        "validated and shipped. None: the raw weights.",
    )
    focal_gamma: float = Field(
        0.0,
        ge=0,
        description="Scale each label's loss by (1 - p_true)^gamma (focal loss), so labels "
        "the model already gets right weigh less; 0: the plain weighted cross-entropy.",
    )
    sampling: Literal["shuffle", "balanced"] = Field(
        "shuffle",
        description="balanced: draw images (with replacement) by their rarest class, "
        "sqrt-tempered, so rare classes are seen more often.",
    )


class ThresholdConfig(_Strict):
    recall_floor: float = Field(0.8, ge=0, le=1)
    default: float = Field(0.5, gt=0, lt=1)


class ServingConfig(_Strict):
    int8: bool = Field(True, description="Also ship an int8 ONNX copy for CPU workers.")
    int8_max_ap_drop: float = Field(
        0.01, ge=0, description="Largest validation macro AP the int8 copy may lose."
    )
    int8_min_agreement: float = Field(
        0.98, ge=0, le=1, description="Share of validation decisions it must keep."
    )
    calibration_images: int = Field(128, ge=1, description="Training images for int8 ranges.")


class TrainConfig(_Strict):
    name: str = "eldefect"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    input: InputConfig = InputConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    thresholds: ThresholdConfig = ThresholdConfig()
    serving: ServingConfig = ServingConfig()


class ConfigError(ValueError):
    """A training config file is missing or invalid (reason in the message)."""


def load_train_config(path: Path) -> TrainConfig:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"training config {path} {what}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable YAML file: {exc}") from None
    try:
        return TrainConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid training config:\n{exc}") from None
