"""pact's configuration: reduction stages made of registered components, validated by pydantic.

Components are chosen by their ``name`` tag among whatever is registered (plugins included),
so the union of component configs is open. Every error names its field path.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from pact.config_fields import ClustererField, MergerField, ScorerField, default_component
from pact.config_text import is_file, parse_text, set_path
from pact.errors import ConfigError
from pact.mergers.base import PositionMode
from pact.presets import list_presets, preset_dict
from pact.registry import CLUSTERERS, MERGERS, SCORERS

FeatureSource = Literal["keys_rope", "keys", "keys_mean", "hidden"]


class RecyclingConfig(BaseModel):
    """Pruned tokens given a second life: the best-scored of them, grouped by a clusterer,
    each group folded into one token by the stage's merger (SparseVLM's recycling, VisionZip's
    contextual tokens)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    fraction: float = Field(0.3, gt=0.0, le=1.0)
    """Share of the pruned tokens recycled, best scores first: ``floor(fraction x pruned) +
    1`` of them, at most all (SparseVLM: 0.3; VisionZip: 1, every pruned token)."""
    clusterer: ClustererField = Field(default_factory=default_component(CLUSTERERS, "dpc_knn"))
    """Clusterer grouping the recycled tokens (on the stage's ``cluster_on`` vectors); each
    cluster becomes one token at its center's slot. Default: ``dpc_knn``, SparseVLM's
    (``recycling: {}`` is SparseVLM's recycling)."""


class StageConfig(BaseModel):
    """One reduction: at ``layer``, prune with a scorer, cluster what is kept, merge."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    layer: int = Field(ge=0, strict=True)
    """Decoder layer (0-based) at whose input the visual tokens are reduced; a vision stage
    acts on the language model's input: 0 (the default there)."""
    place: Literal["decoder", "vision"] = "decoder"
    """Where the stage decides: in the decoder, from the layer's own tensors; or on the vision
    side (VisionZip), from the vision tower's attention, merging the tower's features before the
    projector (removed tokens never enter the language model). A vision stage is the first."""
    tower_layer: int | None = Field(None, strict=True)
    """Vision stage only: the tower layer whose attention and keys it reads, negative counting
    from the end; None: the layer whose output the model reads (LLaVA's
    ``vision_feature_layer``; Qwen-VL's last full-attention block)."""
    scorer: ScorerField | None = None
    """Importance scorer for pruning; None: no pruning."""
    keep_ratio: float | None = Field(None, ge=0.0, le=1.0)
    """Fraction of visual tokens the scorer keeps (floor, at least 1 unless 0); None: the
    scorer's default (euti 0.55, withdraw 0, others 0.5), or the scorer's own count where its
    settings choose one (sparsevlm with ``rank_scale``). Per row: a row's images share it."""
    keep_tokens: int | None = Field(None, ge=1, strict=True)
    """Visual tokens the scorer keeps of each image (all of an image that has fewer), instead
    of ``keep_ratio``: the budgets papers report (64, 128, 192 per image). An image is a run of
    consecutive visual tokens, so the count is exact per image for any-resolution images and
    for every image of a multi-image row."""
    clusterer: ClustererField = Field(default_factory=default_component(CLUSTERERS, "none"))
    """Clusterer grouping the kept visual tokens; ``none``: no merging."""
    merger: MergerField = Field(default_factory=default_component(MERGERS, "mean"))
    """Merger folding each cluster into one token."""
    cluster_on: FeatureSource = "keys_rope"
    """Vectors distances are measured on: layer keys after RoPE (PACT), before, their mean over
    heads (VisionZip's metric), or hidden states."""
    recycling: RecyclingConfig | None = None
    """Fold the best-scored pruned tokens into a few new ones (see :class:`RecyclingConfig`);
    None: pruned tokens are dropped."""
    retrieval: bool = False
    """Take pruned visual tokens back into their nearest cluster if within alpha x bound."""
    alpha: float | None = Field(None, gt=0.0)
    """Retrieval radius as a multiple of the clusterer's distance bound; set with retrieval
    only (default 1.5 then)."""
    proportional_attention: bool = True
    """Add log(size) to attention logits towards merged tokens from this layer on."""
    position_mode: PositionMode = "keep"
    """Position id of a merged token: its center's (keep), the members' rounded mean, or a
    contiguous renumbering of the reduced sequence."""

    @model_validator(mode="before")
    @classmethod
    def _vision_layer(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("place") == "vision" and "layer" not in data:
            return {**data, "layer": 0}
        return data

    @model_validator(mode="after")
    def _cross_field_rules(self) -> StageConfig:
        self._resolve_place()
        self._resolve_keep_ratio()
        self._resolve_retrieval()
        if self.recycling is not None:
            if self.scorer is None:
                raise ValueError("recycling folds pruned tokens and needs a scorer; set scorer")
            if self.retrieval:
                raise ValueError("retrieval and recycling both claim the pruned tokens; choose one")
        return self

    def _resolve_place(self) -> None:
        if self.place == "decoder":
            if self.tower_layer is not None:
                raise ValueError("tower_layer applies to place: vision only; remove it")
            if self.scorer is not None and type(self.scorer).reads_tower:
                raise ValueError(
                    f"scorer {self.scorer.name!r} reads the vision tower's attention: set "
                    "place: vision"
                )
            return
        if self.layer != 0:
            raise ValueError(
                "a vision stage acts on the language model's input: layer must be 0 or unset"
            )
        if self.position_mode != "keep":
            raise ValueError("a vision stage keeps original positions: position_mode must be keep")
        if self.cluster_on == "keys_rope":
            # The tower's keys come rotated or not as its attention uses them.
            object.__setattr__(self, "cluster_on", "keys")

    def _resolve_keep_ratio(self) -> None:
        if self.scorer is None:
            if self.keep_ratio not in (None, 1.0):
                raise ValueError("keep_ratio prunes visual tokens and needs a scorer; set scorer")
            if self.keep_tokens is not None:
                raise ValueError("keep_tokens prunes visual tokens and needs a scorer; set scorer")
            return
        setting = self.scorer.keep_count_setting()
        if setting is not None:
            # keep_ratio stays None (no default filled in): a config written out reloads.
            for field in ("keep_ratio", "keep_tokens"):
                if getattr(self, field) is not None:
                    raise ValueError(
                        f"scorer {self.scorer.name!r} with {setting} chooses the keep count "
                        f"itself; remove {field} (override: {field}=null) or unset "
                        f"scorer.{setting}"
                    )
            return
        fixed = type(self.scorer).fixed_keep_ratio
        if self.keep_tokens is not None:
            if fixed is not None:
                raise ValueError(
                    f"scorer {self.scorer.name!r} keeps a fixed ratio ({fixed}); remove keep_tokens"
                )
            if self.keep_ratio is not None:
                raise ValueError(
                    "set one of keep_ratio and keep_tokens (override: keep_ratio=null)"
                )
            return
        if fixed is not None and self.keep_ratio not in (None, fixed):
            raise ValueError(f"keep_ratio must be {fixed} with scorer {self.scorer.name!r}")
        if self.keep_ratio is None:
            object.__setattr__(self, "keep_ratio", type(self.scorer).default_keep_ratio)

    def _resolve_retrieval(self) -> None:
        if not self.retrieval:
            if self.alpha is not None:
                raise ValueError(
                    "alpha has an effect only with retrieval: true; remove it "
                    "(override: alpha=null)"
                )
            return
        if self.scorer is None:
            raise ValueError("retrieval takes back pruned tokens and needs a scorer")
        if self.clusterer.distance_bound() is None:
            raise ValueError(
                f"retrieval needs a clusterer with a distance bound (e.g. dbdpc); "
                f"{self.clusterer.name!r} has none"
            )
        if self.alpha is None:
            object.__setattr__(self, "alpha", 1.5)

    @property
    def retrieval_radius(self) -> float | None:
        """Cosine distance within which pruned tokens are retrieved; None when off."""
        if not self.retrieval:
            return None
        assert self.alpha is not None
        return self.alpha * self.clusterer.distance_bound()


class PactConfig(BaseModel):
    """A whole reduction schedule: zero or more stages at increasing decoder layers."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    stages: list[StageConfig] = Field(default_factory=list)
    """Reduction stages, in increasing layer order; empty: the unchanged model."""

    @model_validator(mode="after")
    def _increasing_layers(self) -> PactConfig:
        layers = [stage.layer for stage in self.stages]
        if any(stage.place == "vision" for stage in self.stages[1:]):
            raise ValueError("a stage with place: vision must be the first stage")
        if any(b <= a for a, b in itertools.pairwise(layers)):
            raise ValueError(f"stages must be at strictly increasing layers; got {layers}")
        return self

    @classmethod
    def load(cls, source: Any = "none", overrides: Iterable[str] = ()) -> PactConfig:
        """From a PactConfig, mapping, YAML/JSON file path, YAML text, or preset name.

        ``overrides`` are ``path=value`` strings (see :func:`apply_override`).
        """
        data = source_to_dict(source)
        for override in overrides:
            data = apply_override(data, override)
        return cls.validate_dict(data, origin=_describe(source))

    @classmethod
    def validate_dict(cls, data: Any, origin: str = "config") -> PactConfig:
        """Validate a mapping; failures raise :class:`ConfigError` with one line per field."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(format_errors(error, origin, data)) from None

    def with_overrides(self, *overrides: str) -> PactConfig:
        """A new config with ``path=value`` overrides applied and everything revalidated."""
        return PactConfig.load(self, overrides)

    def within(self, layers: int) -> PactConfig:
        """This config without the stages it places at layer ``layers`` or later (a decoder
        of ``layers`` layers has none there; presets are written for 28)."""
        stages = [stage for stage in self.stages if stage.layer < layers]
        return self if len(stages) == len(self.stages) else PactConfig(stages=stages)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Every field written out; reloading gives an equal config."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)) and "\n" not in str(source):
        return str(source)
    return "config"


def source_to_dict(source: Any) -> dict[str, Any]:
    """The mapping a config source holds, before validation: a :class:`PactConfig`, a
    mapping (copied), a YAML/JSON file path, YAML or JSON text, or a preset name."""
    if isinstance(source, PactConfig):
        return source.to_dict()
    if isinstance(source, Mapping):
        return json.loads(json.dumps(source))  # a deep copy that overrides may edit
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return parse_text(source, "config text")  # one-line JSON or YAML flow mapping
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        path = Path(source)
        if path.suffix in {".yaml", ".yml", ".json"} or is_file(path):
            if not is_file(path):
                raise ConfigError(
                    f"config file {str(path)!r} does not exist; presets: "
                    f"{', '.join(list_presets())}"
                )
            return parse_text(path.read_text(encoding="utf-8"), str(path))
        if str(source) in list_presets():
            return preset_dict(str(source))
        raise ConfigError(
            f"{source!r} is neither a config file nor a preset; "
            f"presets: {', '.join(list_presets())}"
        )
    if isinstance(source, str):
        return parse_text(source, "config text")
    raise ConfigError(
        f"config must be a PactConfig, a mapping, a file path or a preset name; got "
        f"{type(source).__name__}"
    )


def format_errors(error: ValidationError, origin: str, data: Any = None) -> str:
    """``origin: N problems`` then one ``field.path: message (got value)`` line each.

    With the validated ``data``, an unknown key's line also lists the keys allowed there.
    """
    lines = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = "" if item["type"] == "missing" else f" (got {item['input']!r})"
        if isinstance(item["input"], (dict, list)):
            got = ""
        allowed = ""
        if item["type"] == "extra_forbidden":
            model = _model_at(data, item["loc"][:-1])
            if model is not None:
                allowed = f"; allowed: {', '.join(sorted(model.model_fields))}"
        lines.append(f"  {path}: {item['msg']}{got}{allowed}")
    return f"{origin}: {len(lines)} invalid setting(s)\n" + "\n".join(lines)


_COMPONENT_FIELDS = {"scorer": SCORERS, "clusterer": CLUSTERERS, "merger": MERGERS}


def _model_at(data: Any, loc: tuple) -> type[BaseModel] | None:
    """The config model that validates the mapping at ``loc`` in ``data`` (None if unsure).

    Components are looked up by the ``name`` in ``data``: the union of their configs is open.
    """
    model: type[BaseModel] = PactConfig
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
        if isinstance(part, int):  # an item of `stages`: the model is already StageConfig
            continue
        if model is PactConfig and part == "stages":
            model = StageConfig
        elif model is StageConfig and part in _COMPONENT_FIELDS:
            name = node.get("name") if isinstance(node, Mapping) else None
            if not isinstance(name, str) or name not in _COMPONENT_FIELDS[part]:
                return None
            model = _COMPONENT_FIELDS[part].get(name).Config
        else:
            return None
    return model


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one ``path=value`` override to a config mapping (returns the edited copy).

    ``value`` is parsed as YAML (``0.3``, ``true``, ``null``, ``[1, 2]``, ``dbdpc``).
    ``path`` is dotted: ``stages.0.clusterer.cutoff``; ``stages.*.x`` sets every stage;
    a path that starts with a stage field (``clusterer.cutoff``) is short for ``stages.*.``.
    Setting a component's ``name`` to another component resets that component's settings
    to the new one's defaults (old settings belong to the old component).
    """
    path, sep, raw = override.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"override {override!r} must look like 'path=value'")
    keys = path.strip().split(".")
    if keys[0] in StageConfig.model_fields:
        keys = ["stages", "*", *keys]
    value = yaml.safe_load(raw) if raw.strip() else None
    data = json.loads(json.dumps(data))
    set_path(data, keys, value, override)
    return data
