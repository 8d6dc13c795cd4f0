"""The model card: what a registered model carries besides its weights.

Labels, input spec (size, normalisation), per-class thresholds tuned on validation data, the
selection metric it was chosen by, the reference input profile drift is measured against, and
the full training config (so the model can be rebuilt). Stored in the MLmodel metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # preprocess imports torch; drift reads cards in processes without it
    from eldefect.preprocess import InputSpec


@dataclass
class ModelCard:
    labels: list[str]
    input: dict[str, Any]  # InputSpec's fields
    thresholds: dict[str, float]
    selection_metric: str
    selection_value: float
    # features, positive_rates, n_images; since drift monitoring also predicted_positive_rates,
    # mean_probabilities, n_validation_images (older cards lack these: drift notes it).
    profile: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    # From `eldefect train --cv K`: per-class fold means and spreads, and the calibration of
    # the out-of-fold probabilities the thresholds were tuned on (empty without --cv).
    cv: dict[str, Any] = field(default_factory=dict)
    # Serving copies made at training time: {"int8": eldefect.quantize.Int8Check as a dict}.
    serving: dict[str, Any] = field(default_factory=dict)

    @property
    def int8_accepted(self) -> bool:
        """Whether the int8 copy passed its validation check (eldefect.quantize)."""
        return bool(self.serving.get("int8", {}).get("accepted", False))

    @property
    def input_spec(self) -> InputSpec:
        """The input spec; refuses fields this version does not know.

        A newer trainer may add a way of preparing the input (as `standardize` was added); an
        older worker that ignored the field would serve the model wrong pixels without a sign.
        Refusing it makes the worker keep the model it serves and report why (model_cache).
        """
        from dataclasses import fields

        from eldefect.preprocess import InputSpec

        unknown = sorted(set(self.input) - {f.name for f in fields(InputSpec)})
        if unknown:
            raise ValueError(
                f"this model's input spec has fields this version of eldefect does not know "
                f"({', '.join(unknown)}): it was trained by a newer version; upgrade to serve it"
            )
        return InputSpec(
            int(self.input["size"]),
            float(self.input["mean"]),
            float(self.input["std"]),
            bool(self.input.get("standardize", False)),  # cards before the option: False
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
