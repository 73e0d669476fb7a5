"""EfficientNet-Lite as a transformers model.

transformers ships EfficientNet B0-B7 (swish activations, squeeze-and-excitation, stem and head scaled with the
width) but not the Lite variants that Google made for mobile accelerators: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem and head that stay fixed (32 and 1280 channels) whatever the width. This file
reproduces that architecture (after `efficientnet_lite_pytorch`, itself after Google's `efficientnet_lite_builder.py`)
as a `PreTrainedConfig` / `PreTrainedModel` pair, so the model loads, saves, fine-tunes and runs in
`pipeline("image-classification")` like any transformers image classifier once `hfpipes.models` registered it.

Convolutions use TensorFlow's "SAME" padding (extra pixel at the bottom/right for strided convolutions), which the
original weights were trained with.

Example:

```python
>>> import torch
>>> from hfpipes.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification
>>> model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=10))
>>> model(pixel_values=torch.randn(1, 3, 224, 224)).logits.shape
torch.Size([1, 10])
```
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLiteForImageClassification",
    "EfficientNetLiteModel",
    "EfficientNetLitePreTrainedModel",
]


@strict
class EfficientNetLiteConfig(PreTrainedConfig):
    r"""
    Configuration of an EfficientNet-Lite model. The defaults give EfficientNet-Lite0 (4.65M parameters, 224x224
    input); Lite1-Lite4 are the same lists with more channels and repeats.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        image_size (`int`, *optional*, defaults to 224):
            Resolution the model was trained at (informative: the convolutions accept any size).
        stem_channels (`int`, *optional*, defaults to 32):
            Output channels of the stem convolution (fixed in the Lite variants).
        block_out_channels (`list[int]`, *optional*, defaults to `[16, 24, 40, 80, 112, 192, 320]`):
            Output channels of each stage of inverted-residual blocks.
        block_repeats (`list[int]`, *optional*, defaults to `[1, 2, 2, 3, 3, 4, 1]`):
            Number of blocks in each stage.
        kernel_sizes (`list[int]`, *optional*, defaults to `[3, 3, 5, 3, 5, 5, 3]`):
            Depthwise kernel size of each stage.
        strides (`list[int]`, *optional*, defaults to `[1, 2, 2, 2, 1, 2, 1]`):
            Stride of the first block of each stage.
        expand_ratios (`list[int]`, *optional*, defaults to `[1, 6, 6, 6, 6, 6, 6]`):
            Channel expansion of the inverted bottleneck in each stage.
        head_channels (`int`, *optional*, defaults to 1280):
            Output channels of the 1x1 head convolution, i.e. the size of the pooled features (fixed in Lite).
        batch_norm_eps (`float`, *optional*, defaults to 1e-3):
            Epsilon of the batch normalizations.
        batch_norm_momentum (`float`, *optional*, defaults to 0.01):
            PyTorch momentum of the batch normalizations (TensorFlow's decay of 0.99).
        dropout_rate (`float`, *optional*, defaults to 0.2):
            Dropout before the classifier.
        drop_connect_rate (`float`, *optional*, defaults to 0.2):
            Stochastic depth of the residual blocks while training, increasing linearly to this rate.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the classifier's initial weights.

    Example:

    ```python
    >>> from hfpipes.models.efficientnet_lite import EfficientNetLiteConfig
    >>> tiny = EfficientNetLiteConfig(stem_channels=8, block_out_channels=[8, 16], block_repeats=[1, 2],
    ...     kernel_sizes=[3, 5], strides=[1, 2], expand_ratios=[1, 4], head_channels=32, num_labels=3)
    >>> tiny.num_labels
    3
    ```
    """

    model_type = "efficientnet_lite"

    num_channels: int = 3
    image_size: int = 224
    stem_channels: int = 32
    block_out_channels: list[int] | tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    block_repeats: list[int] | tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    kernel_sizes: list[int] | tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    expand_ratios: list[int] | tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    head_channels: int = 1280
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    dropout_rate: float | int = 0.2
    drop_connect_rate: float | int = 0.2
    initializer_range: float = 0.02

    def validate_architecture(self):
        """Every per-stage list must have one entry per stage (run by `@strict` when the config is created)."""
        stages = len(self.block_out_channels)
        for name in ("block_repeats", "kernel_sizes", "strides", "expand_ratios"):
            if len(getattr(self, name)) != stages:
                raise ValueError(
                    f"EfficientNetLiteConfig.{name} has {len(getattr(self, name))} entries, expected one per stage "
                    f"({stages}, the length of block_out_channels)."
                )


class EfficientNetLiteConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding: output size = ceil(input size / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        # With stride 1 and an odd kernel, "SAME" is symmetric and the built-in padding is exact; strided
        # convolutions need the asymmetric padding computed from the input size in `forward`.
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size, kernel, stride in zip(
                hidden_states.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
            ):
                total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
                pads += [total // 2, total - total // 2]
            hidden_states = F.pad(hidden_states, pads)
        return super().forward(hidden_states)


class EfficientNetLiteConvBn(nn.Module):
    """Convolution, batch normalization and (optionally) ReLU6."""

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        super().__init__()
        self.conv = EfficientNetLiteConv2d(in_channels, out_channels, kernel_size, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.activation = nn.ReLU6() if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(hidden_states)))


class EfficientNetLiteBlock(nn.Module):
    """Inverted residual block (MBConv) without squeeze-and-excitation."""

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_rate: float,
    ):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = EfficientNetLiteConvBn(config, in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = EfficientNetLiteConvBn(config, hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = EfficientNetLiteConvBn(config, hidden, out_channels, 1, activation=False)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_rate = drop_rate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = self.project(self.depthwise(self.expand(hidden_states)))
        if not self.has_residual:
            return output
        if self.training and self.drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample, rescaling the kept ones.
            keep = 1.0 - self.drop_rate
            mask = torch.rand(output.shape[0], 1, 1, 1, dtype=output.dtype, device=output.device) < keep
            output = output * mask / keep
        return output + hidden_states


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers plumbing shared by the EfficientNet-Lite models."""

    config: EfficientNetLiteConfig
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["EfficientNetLiteBlock"]

    def _init_weights(self, module: nn.Module):
        # The base class covers the classifier (normal, `initializer_range`) and the batch normalizations.
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            # TensorFlow EfficientNet's initialiser (variance scaling on fan-out) rather than a fixed small std,
            # which would make the activations of a deep ReLU6 stack vanish in a freshly initialised backbone.
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """
    The EfficientNet-Lite backbone: stem, inverted-residual stages, 1x1 head convolution and global average pooling.

    Example:

    ```python
    >>> import torch
    >>> from hfpipes.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
    >>> outputs = EfficientNetLiteModel(EfficientNetLiteConfig())(torch.randn(1, 3, 224, 224))
    >>> outputs.last_hidden_state.shape, outputs.pooler_output.shape
    (torch.Size([1, 1280, 7, 7]), torch.Size([1, 1280]))
    ```
    """

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.stem = EfficientNetLiteConvBn(config, config.num_channels, config.stem_channels, 3, stride=2)
        num_blocks = sum(config.block_repeats)
        blocks = []
        in_channels = config.stem_channels
        for out_channels, repeats, kernel_size, stride, expand_ratio in zip(
            config.block_out_channels,
            config.block_repeats,
            config.kernel_sizes,
            config.strides,
            config.expand_ratios,
            strict=True,
        ):
            for repeat in range(repeats):
                # The reference scales the stochastic-depth rate with the block's depth in the network.
                drop_rate = config.drop_connect_rate * len(blocks) / num_blocks
                blocks.append(
                    EfficientNetLiteBlock(
                        config,
                        in_channels,
                        out_channels,
                        kernel_size,
                        stride if repeat == 0 else 1,
                        expand_ratio,
                        drop_rate,
                    )
                )
                in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = EfficientNetLiteConvBn(config, in_channels, config.head_channels, 1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images, `(x * 255 - 127) / 128` for the ImageNet weights.
            output_hidden_states (`bool`, *optional*):
                Also return the feature map after the stem and after every block.
            return_dict (`bool`, *optional*):
                Return a `BaseModelOutputWithPoolingAndNoAttention` rather than a tuple (the config's default).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = self.stem(pixel_values)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for block in self.blocks:
            hidden_states = block(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.head(hidden_states)
        pooled = hidden_states.mean(dim=(2, 3))
        if not return_dict:
            return tuple(v for v in (hidden_states, pooled, all_hidden_states) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_states, pooler_output=pooled, hidden_states=all_hidden_states
        )


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """
    EfficientNet-Lite with a dropout + linear classifier on the pooled features.

    Example:

    ```python
    >>> import torch
    >>> from hfpipes.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification
    >>> model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=3))
    >>> out = model(pixel_values=torch.randn(2, 3, 224, 224), labels=torch.tensor([0, 2]))
    >>> out.logits.shape, out.loss.dim()
    (torch.Size([2, 3]), 0)
    ```
    """

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.efficientnet_lite = EfficientNetLiteModel(config)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.head_channels, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images, `(x * 255 - 127) / 128` for the ImageNet weights.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)`; when given, the cross-entropy loss is returned too (float
                targets of shape `(batch_size, num_labels)` give the multi-label loss, as in transformers).
            output_hidden_states (`bool`, *optional*):
                Also return the backbone's intermediate feature maps.
            return_dict (`bool`, *optional*):
                Return an `ImageClassifierOutputWithNoAttention` rather than a tuple (the config's default).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.efficientnet_lite(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
