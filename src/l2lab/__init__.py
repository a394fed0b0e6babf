"""l2lab: a reproducible lab for studying L2 regularization on CIFAR-10."""

__version__ = "0.2.0"
