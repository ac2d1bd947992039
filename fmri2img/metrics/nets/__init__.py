"""Compact definitions of the evaluation CNNs with torchvision's state-dict key names.

torchvision itself is not a dependency (its binary wheels are tied to one torch build);
these modules load torchvision's published weight files, and the SwAV ResNet-50
checkpoint, unchanged.  Every network has ``tap(x, name)`` returning the activation the
evaluation uses, and a ``build_*`` function taking ``weights`` (a local path or opened weights
from :func:`fmri2img.storage.weights.open_weights`, never a URL; None for seeded random weights)
and ``seed``.
"""
from .alexnet import AlexNet, build_alexnet
from .efficientnet import EfficientNetB1, build_efficientnet_b1
from .inception import InceptionV3, build_inception_v3
from .resnet import ResNet50, build_resnet50, swav_to_torchvision

__all__ = ["AlexNet", "EfficientNetB1", "InceptionV3", "ResNet50", "build_alexnet", "build_efficientnet_b1",
           "build_inception_v3", "build_resnet50", "swav_to_torchvision"]
