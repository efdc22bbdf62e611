"""The three MONAI 3D segmentation networks the inference benchmarks run, exported to ONNX.

Random weights from a fixed seed (speed does not depend on them); batch-norm running statistics
are set to non-trivial fixed values so that the exported graph carries real normalisation. Needs
torch and monai (benchmark/test-only dependencies).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

ROI = (96, 96, 96)

# name -> (config text shown next to every figure, builder)
NETS: dict[str, tuple[str, Callable[[], Any]]] = {}


def _register(name: str, config: str):
    def wrap(fn):
        NETS[name] = (config, fn)
        return fn
    return wrap


def _seeded(net):
    import torch

    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


@_register("UNet", "monai UNet(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm='batch')")
def unet():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return _seeded(UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128),
                        strides=(2, 2, 2), num_res_units=2, norm="batch"))


@_register("DynUNet", "monai DynUNet nnU-Net-style (kernels 3^3 x5, strides (1, 2, 2, 2, 2), "
                      "filters (16, 32, 64, 128, 256), instance norm, leaky ReLU)")
def dynunet():
    import torch
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return _seeded(DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3] * 5,
                           strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2] * 4,
                           filters=(16, 32, 64, 128, 256), norm_name="instance"))


@_register("SegResNet", "monai SegResNet(init_filters=8, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), "
                        "group norm 8)")
def segresnet():
    import torch
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    return _seeded(SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8,
                             blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)))


def build(name: str):
    """The network ``name`` of :data:`NETS`, in eval mode."""
    return NETS[name][1]()


def export_onnx(net, path: Path, roi: tuple[int, int, int] = ROI) -> Path:
    """Export with dynamic batch and spatial axes (opset 17, TorchScript exporter)."""
    import torch

    axes = {0: "b", 2: "z", 3: "y", 4: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, *roi),), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": axes, "logits": axes})
    return path
