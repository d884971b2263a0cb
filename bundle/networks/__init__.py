from .maht_net import MAHTNet

__all__ = ["MAHTNet"]
