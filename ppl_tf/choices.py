"""The named choices of a run, each list in one place.

The modules that act on a choice (`ppl_tf.distribute` for strategies, `ppl_tf.models.backbones`
for backbones and output strides, `ppl_tf.training` for optimizers, `ppl_tf.export` for the
exported network, `ppl_tf.run` for precisions) and `ppl_tf.config`, which checks a config
against them, import them from here. This module imports nothing, so that `ppl_tf.config` checks
a config without loading TensorFlow: a mistake in a config is reported at once, on one line,
without TensorFlow's start-up messages in front of it.
"""

# auto: mirrored when more than one GPU is visible, else one (`ppl_tf.distribute`)
STRATEGIES = ("auto", "one", "mirrored", "multi_worker")
# auto: mixed_float16 on a GPU, else float32 (`ppl_tf.run.set_precision`)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
BACKBONES = ("tiny", "resnet50", "resnet101")
OUTPUT_STRIDES = (8, 16)
OPTIMIZERS = ("sgd", "adamw")  # sgd: the paper's; adamw: for backbones trained from scratch
NETWORKS = ("teacher", "student")  # the two networks a run trains (the teacher is the EMA)
# best: the one of higher validation mIoU (`ppl_tf.export.choose_network`)
EXPORT_NETWORKS = ("best", *NETWORKS)
