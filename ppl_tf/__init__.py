"""ppl_tf: Push-and-Pull Learning for semi-supervised semantic segmentation."""

__version__ = "0.1.0"
