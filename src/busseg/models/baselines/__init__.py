"""Baselines the papers compare against, one module per family.

- ``unet``        Ronneberger et al.'s U-Net, written here (``unet``)
- ``smp_models``  segmentation-models-pytorch networks on ResNet encoders (``unet_resnet18``,
  ``unetplusplus``, ``fpn``, ``deeplabv3plus``)
- ``fcn``         FCN-8s on VGG-16 (``fcn``) and on ResNet-18 (``fcn_resnet18``), written here
- ``segnet``      SegNet with a VGG-16-BN encoder and max-unpooling decoder, written here

(Attention U-Net lives in ``busseg.models.attention_unet``.)
"""

from busseg.models.baselines import fcn  # noqa: F401
from busseg.models.baselines import segnet  # noqa: F401
from busseg.models.baselines import smp_models  # noqa: F401
from busseg.models.baselines import unet  # noqa: F401
