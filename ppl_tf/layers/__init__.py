from ppl_tf.layers.dilated_conv import DilatedConv2D
from ppl_tf.layers.memory_bank import ClassifierMemoryBank
from ppl_tf.layers.normalize import Normalize
from ppl_tf.layers.ppl_stage import PPLStage
from ppl_tf.layers.projection_block import ProjectionBlock
from ppl_tf.layers.prototype_attention import PrototypeAttention
from ppl_tf.layers.resize import ResizeLike

__all__ = [
    "ClassifierMemoryBank",
    "DilatedConv2D",
    "Normalize",
    "PPLStage",
    "ProjectionBlock",
    "PrototypeAttention",
    "ResizeLike",
]
