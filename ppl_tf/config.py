"""Run configuration: flat YAML files read into a frozen dataclass, with `key=value` overrides.

    config = load_config("configs/voc_r50.yaml", ["labeled=1/8", "epochs=40"])

Every key of a file or override must be a field of `TrainConfig`; an unknown key, a value of
the wrong type or an invalid choice is a `ConfigError` naming the file (or override) and the key.
So is a combination of keys that cannot work together (`TrainConfig.__post_init__` holds every
rule that involves more than one key), so that a run stops before it reads any data.

Which settings a run gets:
- `scripts/train.py` without `--config` runs `configs/demo.yaml` (`DEMO_CONFIG`): the digit
  scenes with the tiny backbone trained from scratch, hence AdamW (LR 0.002, no smaller backbone
  LR), lambda 0.5 and output stride 8; see the file's comments.
- `configs/voc_r*.yaml` and `configs/cityscapes_r*.yaml` are the paper's settings (Sec. 4.2).
- A key that a file and the overrides leave out takes `TrainConfig`'s default (see its
  docstring): the paper's VOC method and optimization, the same as `PPLTrainer`'s defaults.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ppl_tf.choices import (
    BACKBONES,
    EXPORT_NETWORKS,
    OPTIMIZERS,
    OUTPUT_STRIDES,
    PRECISIONS,
    STRATEGIES,
)

# What scripts/train.py, scripts/validate.py and scripts/experiments.py run without --config. A
# file of the source tree: configs/ is not installed with the package.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
DATASETS = ("digits", "voc", "cityscapes", "cityscapes_tfds", "custom")
DIGIT_LAYOUTS = ("standard", "crowded", "overlap")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run (the keys of a config file), checked as a whole when created.

    The defaults tell one story with the library's: the method and the optimization are the
    paper's VOC setting (Sec. 4.2, configs/voc_r50.yaml): SGD 0.9 from LR 0.01 with the
    backbone's LR x0.1, weight decay 1e-4, lambda 0.1, tau 0.8, gamma 32, m 0.25, n = 2 stages,
    T = 10, output stride 16, 80 epochs with 10 of warm-up, batches of 8 + 8: the defaults of
    `PPLTrainer`, its `compile` and `build_segmenter`. The data and the model's size default to
    what runs anywhere without a download (the digit scenes, 64-pixel crops, the tiny
    backbone), not to VOC with an ImageNet ResNet-50. `configs/demo.yaml`, what train.py runs
    without --config, sets its own optimization for the tiny backbone (see the module
    docstring).
    """

    # data
    dataset: str = "digits"  # digits | voc | cityscapes | cityscapes_tfds | custom
    # root of voc/cityscapes/custom data; cityscapes_tfds: the folder with the two zips
    data_dir: str | None = None
    tfds_data_dir: str | None = None  # cityscapes_tfds: prepared records (~/tensorflow_datasets)
    cache_dir: str = "data_cache"  # where digit scenes are written
    digits_train_scenes: int = 4000
    # standard: 64x64 scenes, 2-4 digits of 20-28 px; crowded: 128x128 scenes, 4-8 digits of
    # 14-22 px, more background (the held-out check of the demo's settings); overlap: 96x96
    # scenes, 2-3 digits of 30-44 px that may cover each other, striped backgrounds
    digits_layout: str = "standard"
    digits_luma_contrast: float = 60.0  # least luminance step between a digit and its ground
    labeled: str = "1/16"  # a fraction, a count, "all", or a folder of split lists
    crop_size: int = 64
    scale_min: float = 0.8
    scale_max: float = 1.25
    cutmix: bool = False
    # strong view's Gaussian blur sigma in pixels; null: 0.1-2.0 at a 512-px crop, scaled with
    # crop_size (the paper's torchvision setting relative to the content)
    blur_sigma: list[float] | None = None
    # model
    backbone: str = "tiny"  # tiny | resnet50 | resnet101
    backbone_weights: str | None = None  # imagenet | None | a weights file
    output_stride: int = 16
    aspp_rates: list[int] | None = None  # default: (6, 12, 18) at OS 16, (12, 24, 36) at OS 8
    num_stages: int = 2
    memory_length: int = 10
    use_attention: bool = True  # pulling
    # initial BatchNorm scale of the attention's output block g (Eq. 3); 1.0 = the old default
    attention_output_gamma: float = 0.1
    # classifiers see stage i's features x 2^(i-1), the final one x 2^n (undoes Eq. 3's
    # halving for the classifiers' learning speed; Eq. 1-3 compute the same)
    rescale_heads: bool = False
    # attention scores (Eq. 2) times D^-0.5, as OCRNet's object-attention code scales them
    scaled_attention: bool = False
    # method
    use_push: bool = True  # pushing (Eq. 1)
    # factor of the contrastive losses inside L_u (Eq. 6: 1); not in the paper, opt-in
    contrast_weight: float = 1.0
    use_unlabeled: bool = True  # False: supervised only
    tau: float = 0.8
    unsupervised_weight: float = 0.1  # lambda of Eq. 7: 0.1 on VOC, 0.5 on Cityscapes
    gamma: float = 32.0
    margin: float = 0.25
    ohem: bool = False
    # true: labeled images and strong views share the student's BatchNorm batch (see PPLTrainer)
    joint_batchnorm: bool = False
    ema_alpha_start: float = 0.99  # the teacher's EMA rate rises from start to end (cosine)
    ema_alpha_end: float = 1.0
    noise_ratio: float | None = None  # Appendix A: pseudo-labels from noisy ground truth
    # optimization
    optimizer: str = "sgd"  # sgd (paper) | adamw
    base_lr: float = 0.01
    backbone_lr_multiplier: float = 0.1
    weight_decay: float = 1e-4  # sgd: L2 in the gradient (the paper's); adamw: decoupled
    batch_size: int = 8  # global, labeled images per step (as many unlabeled)
    epochs: int = 80
    steps_per_epoch: int | None = None  # default: labeled+unlabeled train set / batch size
    warmup_epochs: int = 10
    # evaluation
    eval_batch_size: int = 8
    # validate teacher and student (and write the epoch's images and the backup) after every
    # this many epochs, and always after the first and the last; the best checkpoint is the
    # best of the validated epochs
    validate_every: int = 1
    eval_crop: int | None = None  # sliding-window evaluation with this window
    eval_flip: bool = False
    # running
    strategy: str = "auto"  # auto | one | mirrored | multi_worker
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16 | auto
    seed: int = 0
    out: str = "runs/demo"
    export: bool = True  # export a network at the end
    # best: the network (teacher or student) with the higher validation mIoU after training
    export_network: str = "best"  # best | teacher | student
    export_dir: str = "exported"
    export_name: str | None = None  # default: the run folder's name
    # also write model_int8.onnx: model.onnx statically quantized with ONNX Runtime, calibrated
    # on this many training images (labeled + unlabeled) as crop_size crops
    export_int8: bool = False
    export_int8_calibration: int = 64
    images_to_log: int = 4  # prediction/pseudo-label images per epoch in TensorBoard

    def __post_init__(self):
        choices = {
            "dataset": DATASETS,
            "strategy": STRATEGIES,
            "precision": PRECISIONS,
            "backbone": BACKBONES,
            "optimizer": OPTIMIZERS,
            "output_stride": OUTPUT_STRIDES,
            "digits_layout": DIGIT_LAYOUTS,
            "export_network": EXPORT_NETWORKS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: must be one of {allowed}, got {getattr(self, key)!r}")
        positive = (
            "batch_size",
            "epochs",
            "crop_size",
            "eval_batch_size",
            "validate_every",
            "memory_length",
            "export_int8_calibration",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("num_stages", "images_to_log"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be at least 0, got {getattr(self, key)}")
        for key in ("steps_per_epoch", "eval_crop"):  # null picks the default
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1 or null, got {getattr(self, key)}")
        if not 0 <= self.tau < 1:
            raise ConfigError(f"tau: must be in [0, 1), got {self.tau}")
        if self.noise_ratio is not None and not 0 <= self.noise_ratio <= 1:
            raise ConfigError(f"noise_ratio: must be in [0, 1] or null, got {self.noise_ratio}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(
                f"scale_min/scale_max: need 0 < min <= max, got {self.scale_min}, {self.scale_max}"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(
                "warmup_epochs/epochs: need 0 <= warmup_epochs <= epochs, got "
                f"{self.warmup_epochs}, {self.epochs}"
            )
        if self.dataset != "digits" and not self.data_dir:
            raise ConfigError(f"data_dir: required for dataset {self.dataset!r}")
        if not 0 <= self.ema_alpha_start <= self.ema_alpha_end <= 1:
            raise ConfigError(
                "ema_alpha_start/ema_alpha_end: need 0 <= start <= end <= 1, got "
                f"{self.ema_alpha_start}, {self.ema_alpha_end}"
            )
        if self.blur_sigma is not None and (
            len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]
        ):
            raise ConfigError(
                f"blur_sigma: need [min, max] with 0 < min <= max, got {self.blur_sigma}"
            )
        if self.aspp_rates is not None and (
            len(self.aspp_rates) != 3 or len(set(self.aspp_rates)) != 3 or min(self.aspp_rates) < 1
        ):
            raise ConfigError(f"aspp_rates: need three different rates >= 1, got {self.aspp_rates}")
        if not self.contrast_weight >= 0:
            raise ConfigError(f"contrast_weight: need a value >= 0, got {self.contrast_weight}")
        if not self.attention_output_gamma > 0:
            raise ConfigError(
                f"attention_output_gamma: need a value > 0, got {self.attention_output_gamma}"
            )
        if self.optimizer != "sgd" and self.backbone_lr_multiplier != 1:
            raise ConfigError(
                f"optimizer={self.optimizer!r} with backbone_lr_multiplier="
                f"{self.backbone_lr_multiplier}: the multiplier scales gradients, a learning-rate "
                "factor for sgd only; set backbone_lr_multiplier=1 or optimizer=sgd"
            )
        if self.noise_ratio is not None and not self.use_unlabeled:
            raise ConfigError(
                f"noise_ratio={self.noise_ratio} with use_unlabeled=false: the noisy ground truth "
                "replaces pseudo-labels, which a supervised-only run has none of; set "
                "use_unlabeled=true or noise_ratio=null"
            )
        if self.backbone == "tiny" and self.backbone_weights is not None:
            raise ConfigError(
                f"backbone=tiny with backbone_weights={self.backbone_weights!r}: the tiny "
                "backbone has no pretrained weights; set backbone_weights=null"
            )

    def to_dict(self):
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _allowed_types(annotation):
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    return hints or (annotation,)


def _number_list(value, kind):
    """`value` as a list of `kind` (int, or float with ints widened), or None if it is not."""
    if not isinstance(value, list) or any(isinstance(v, bool) for v in value):
        return None
    if kind is int and all(isinstance(v, int) for v in value):
        return value
    if kind is float and all(isinstance(v, int | float) for v in value):
        return [float(v) for v in value]
    return None


def _coerce(key, value, where):
    """`value` checked (and int -> float widened) against the type of field `key`."""
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    annotation = typing.get_type_hints(TrainConfig)[key]
    allowed = _allowed_types(annotation)
    if value is None and type(None) in allowed:
        return None
    for kind, example in ((int, "[6, 12, 18]"), (float, "[0.1, 2.0]")):
        if list[kind] in allowed:
            numbers = _number_list(value, kind)
            if numbers is None:
                raise ConfigError(
                    f"{where}: {key} must be a list of {kind.__name__}s, e.g. {example}, "
                    f"got {value!r}"
                )
            return numbers
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if str in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. labeled: 92
    if any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed):
        return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{where}: {key} must be {names}, got {value!r}")


def parse_override(text):
    """ "key=value" -> (key, value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: {error}") from None
    if isinstance(value, str) and "/" in value and key.strip() == "labeled":
        value = raw.strip()
    return key.strip(), value


def load_config(path=None, overrides=()):
    """A `TrainConfig` from the YAML file `path` (optional) and `key=value` overrides."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a flat mapping of keys to values")
        for key, value in data.items():
            values[key] = _coerce(str(key), value, str(path))
    for text in overrides:
        key, value = parse_override(text)
        values[key] = _coerce(key, value, f"override {text!r}")
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        where = str(path) if path is not None else "config"
        raise ConfigError(f"{where}: {error}") from None


def dataset_source(config, verbose=False):
    """The `SegmentationSource` a config names (digit scenes are materialized on first use)."""
    from ppl_tf.data.digit_scenes import (
        DigitSceneConfig,
        crowded_scenes,
        materialize,
        overlap_scenes,
    )
    from ppl_tf.data.sources import load_source

    if config.dataset == "digits":
        scenes = DigitSceneConfig(
            num_train=config.digits_train_scenes, min_luma_contrast=config.digits_luma_contrast
        )
        if config.digits_layout == "crowded":
            scenes = crowded_scenes(scenes)
        elif config.digits_layout == "overlap":
            scenes = overlap_scenes(scenes)
        return load_source("custom", materialize(config.cache_dir, scenes, verbose=verbose))
    return load_source(config.dataset, config.data_dir, config.tfds_data_dir)


def save_config(config, path):
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
