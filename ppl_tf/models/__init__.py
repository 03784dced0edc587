from ppl_tf.models.segmenter import build_segmenter, build_training_view, ppl_stages

__all__ = ["build_segmenter", "build_training_view", "ppl_stages"]
