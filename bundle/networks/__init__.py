from .efficientnet_lite import EfficientNetLiteEncoder
from .maht_net import MAHTNet

__all__ = ["EfficientNetLiteEncoder", "MAHTNet"]
