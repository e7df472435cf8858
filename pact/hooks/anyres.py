"""The vision stage on any-resolution LLaVA: LLaVA-NeXT and LLaVA-OneVision.

Their towers see each image as several crops (a base view and tiles); after the projector,
the model packs each image's crops into one sequence: tiles reassembled, the padding rows
and columns cut off (``unpad``), a newline token after each row. Which crop token lands
where is found by running the model's own ``pack_image_features`` on the tokens' indices
instead of their features; the stage then sees one row per image, its tokens in the order
the language model receives them, and the newline tokens the model adds stay.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import Tensor, nn

from pact.hooks.towers import LlavaTower, TowerTokens


class RecordedArguments:
    """``get_image_features`` of the stock model, recording its arguments for the handle.

    Set as an instance attribute (removed by ``remove``); a deep copy calls the copy's own
    method and records into the copy's handle.
    """

    def __init__(self, inner: nn.Module, handle: Any):
        self.inner, self.handle = inner, handle
        # A user's own instance-level replacement keeps running, and comes back at detach.
        self.previous = vars(inner).get("get_image_features")
        self.__signature__ = inspect.signature(type(inner).get_image_features)
        self.__signature__ = self.__signature__.replace(
            parameters=list(self.__signature__.parameters.values())[1:]
        )
        object.__setattr__(inner, "get_image_features", self)

    def __call__(self, *args, **kwargs):
        bound = self.__signature__.bind_partial(*args, **kwargs)
        self.handle.record_image_arguments(dict(bound.arguments))
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.inner).get_image_features(self.inner, *args, **kwargs)

    def remove(self) -> None:
        if vars(self.inner).get("get_image_features") is self:
            if self.previous is None:
                del self.inner.get_image_features
            else:
                object.__setattr__(self.inner, "get_image_features", self.previous)


class AnyresTower(LlavaTower):
    """LLaVA-NeXT / LLaVA-OneVision (see the module)."""

    def __init__(self, model: nn.Module, tower_layer: int | None):
        super().__init__(model, tower_layer)
        self.inner = model.model
        self.config = model.config

    @property
    def module(self):
        """The model's modelling module (looked up: a module cannot be deep-copied)."""
        return sys.modules[type(self.inner).__module__]

    def install(self, handle: Any) -> list:
        """The crops' count and packing come from ``get_image_features``'s arguments."""
        return [RecordedArguments(self.inner, handle)]

    def crops(self, arguments: dict) -> list[int]:
        """Crops of each image, as the model counts them."""
        sizes = arguments["image_sizes"]
        per_image = arguments.get("batch_num_images")
        single = (
            [True] * len(sizes)
            if per_image is None
            else [n == 1 for n in per_image for _ in range(n)]
        )
        return [
            self.module.image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=self.config.image_grid_pinpoints,
                patch_size=self.config.vision_config.image_size,
            )
            if whole
            else 1
            for size, whole in zip(sizes, single, strict=True)
        ]

    def layouts(self, n_crops: int, tokens: int, arguments: dict) -> list[Tensor]:
        """Per image, the flat crop-token index at each of its language-model positions (-1:
        a newline the model adds), from the model's own packing of the indices."""
        index = torch.arange(1, n_crops * tokens + 1, dtype=torch.float64)[:, None]
        index = index.view(n_crops, tokens, 1)
        accepted = inspect.signature(self.inner.pack_image_features).parameters
        extra = {
            "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
            "vision_aspect_ratio": arguments.get("vision_aspect_ratio")
            or getattr(self.config, "vision_aspect_ratio", None),
        }
        packed, lengths = self.inner.pack_image_features(
            torch.split(index, self.crops(arguments), dim=0),
            arguments["image_sizes"],
            image_newline=torch.zeros(1, dtype=torch.float64),
            **{key: value for key, value in extra.items() if key in accepted},
        )
        if isinstance(packed, (list, tuple)):
            packed = torch.cat(list(packed))
        values = packed[:, 0]
        if not torch.equal(values, values.round()):
            raise ValueError(
                f"{type(self.inner).__name__} resized this image's features (anyres_max); a "
                "vision stage maps tower tokens to language-model tokens one to one: use "
                "smaller images or a decoder stage"
            )
        flat = values.long() - 1
        return list(torch.split(flat, [int(n) for n in lengths]))

    def tokens(self, features: Tensor, call) -> TowerTokens:
        """Every crop's tokens; each image's, in the language model's order, are those its
        packing keeps (the layout marks the newlines it adds)."""
        tokens = self.crop_tokens(features, call.tower)
        layouts = self.layouts(features.shape[0], features.shape[1], call.image_arguments)
        tokens.images = [layout[layout >= 0].to(features.device) for layout in layouts]
        tokens.layout = []
        for layout in layouts:
            slot = torch.full_like(layout, -1)
            slot[layout >= 0] = torch.arange(int((layout >= 0).sum()))
            tokens.layout.append(slot)
        return tokens
