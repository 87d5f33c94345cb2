"""Settings for a model and for a training run, and the named presets.

Both configs are frozen dataclasses, validated once when made. A model's ``to_dict()`` (its layer
list) and a recipe's ``asdict()`` go into config.json and every checkpoint, so a model can be
rebuilt from the file alone. Imports no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from mnist_core import spec
from mnist_core.spec import WIDTH_NAMES

MAX_WIDTH = 128  # template sliders: beyond this the "tiny CNN" is neither tiny nor trainable on a laptop
SCHEDULERS = ("none", "step", "multistep", "onecycle", "cosine", "plateau")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
# The evaluation batch, no gradients: on a CPU 256 images keep the activations in cache (2,000 took 2-4x longer)
EVAL_BATCH = 256
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware has fast bf16 (AMX, AVX-512 BF16, CUDA), else fp32


class ConfigError(ValueError):
    """A setting that cannot work; the message names the value and says why."""


@dataclass(frozen=True)
class ModelConfig:
    """A model: an ordered list of layers (mnist_core.spec), validated once, here."""

    layers: tuple[spec.Layer, ...] = tuple(spec.template())  # the reference experiment's model

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        try:
            object.__setattr__(self, "_rows", tuple(spec.plan(self.layers)))
        except spec.SpecError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def template(cls, widths=(12, 16, 10, 12, 16, 30), batchnorm: bool = True, dropout: float = 0.0) -> "ModelConfig":
        """The reference skeleton with six widths (the Architecture page's sliders)."""
        widths = tuple(widths)
        if len(widths) != len(WIDTH_NAMES):
            raise ConfigError(f"widths: expected {len(WIDTH_NAMES)} values ({', '.join(WIDTH_NAMES)}), "
                              f"got {len(widths)}")
        for name, w in zip(WIDTH_NAMES, widths):
            if isinstance(w, bool) or not isinstance(w, int):
                raise ConfigError(f"width of {name} must be a whole number, got {w!r}")
            if w < 1:
                raise ConfigError(f"width of {name} is {w}: a layer needs at least 1 channel")
            if w > MAX_WIDTH:
                raise ConfigError(f"width of {name} is {w}: at most {MAX_WIDTH} channels per layer")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= spec.MAX_DROPOUT:
            raise ConfigError(f"dropout is {dropout!r}: it must be a number between 0 and {spec.MAX_DROPOUT:g}")
        return cls(tuple(spec.template(widths, bool(batchnorm), float(dropout))))

    @classmethod
    def parse(cls, text: str) -> "ModelConfig":
        """From the JSON form ({"layers": [...]}) or the one-line text form."""
        try:
            return cls(tuple(spec.parse(text)))
        except spec.SpecError as e:
            raise ConfigError(str(e)) from None

    @property
    def rows(self) -> tuple[spec.Row, ...]:
        """The layer table: shapes, parameters, multiply-adds, receptive fields."""
        return self._rows

    @property
    def params(self) -> int:
        return sum(r.params for r in self._rows)

    def template_settings(self) -> tuple[tuple[int, ...], bool, float] | None:
        """(widths, batchnorm, dropout) when the list is the reference skeleton, else None."""
        convs = [lay for lay in self.layers if lay.type == "conv"]
        drops = {lay.p for lay in self.layers if lay.type == "dropout"}
        if len(convs) != 7 or len(drops) > 1:
            return None
        widths = tuple(c.out for c in convs[:6])
        batchnorm = any(lay.type == "bn" for lay in self.layers)
        dropout = drops.pop() if drops else 0.0
        if tuple(spec.template(widths, batchnorm, dropout)) != self.layers:
            return None
        return widths, batchnorm, dropout

    @property
    def text(self) -> str:
        return spec.to_text(self.layers)

    def describe(self) -> str:
        """The model in words: '12-16-10-12-16-30, BN' for the template, else the layer text."""
        t = self.template_settings()
        if t is None:
            return self.text
        widths, batchnorm, dropout = t
        drop = f", dropout {dropout:g}" if dropout else ""
        return f"{'-'.join(map(str, widths))}, {'BN' if batchnorm else 'no BN'}{drop}"

    def to_dict(self) -> dict:
        return spec.to_json(self.layers)

    @classmethod
    def from_dict(cls, d) -> "ModelConfig":
        """{"layers": [...]}; also the six-width form that runs and checkpoints were saved in before."""
        if isinstance(d, dict) and "layers" not in d and "widths" in d:
            unknown = set(d) - {"widths", "batchnorm", "dropout"}
            if unknown:
                raise ConfigError(f"ModelConfig: unknown setting(s) {', '.join(sorted(unknown))}")
            widths = d["widths"]
            if not isinstance(widths, (list, tuple)):
                raise ConfigError(f"widths: expected a list of {len(WIDTH_NAMES)} numbers, got {widths!r}")
            return cls.template(tuple(widths), d.get("batchnorm", True), d.get("dropout", 0.0))
        if not isinstance(d, dict):
            raise ConfigError(f"ModelConfig: expected a mapping, got {type(d).__name__}")
        try:
            return cls(tuple(spec.layers_from_json(d)))
        except spec.SpecError as e:
            raise ConfigError(str(e)) from None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15  # passes over the training set
    batch_size: int = 64  # images per optimizer step
    lr: float = 0.01  # learning rate (the peak rate for onecycle and cosine)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty (AdamW: decoupled weight decay)
    scheduler: str = "none"  # none | step | multistep | onecycle | cosine | plateau
    step_size: int = 6  # step: epochs between decays
    gamma: float = 0.1  # step, multistep, plateau: the factor each decay multiplies the rate by
    augment: float = 0.0  # shorthand, as before: rotation up to this many degrees, shift up to a quarter of it in pixels, scale within 1 +- 1/100 of it
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    ema: float = 0.0  # decay of a moving average of the weights and BatchNorm statistics, updated every step: the average is tested and saved (0 = off)
    seed: int = 1  # same seed, same device -> same run
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "fp32"  # fp32 | bf16 (autocast for the forward pass; weights and optimizer stay fp32) | auto
    channels_last: bool = False  # keep images and activations channels-last (NHWC): faster for some shapes (max-pool on CPU), slower for others; results unchanged
    limit_train: int | None = None  # use only the first N training images (quick tries)
    limit_test: int | None = None  # use only the first N test images
    eval_batch_size: int = EVAL_BATCH  # images per batch of the test pass
    init_checkpoint: str | None = None  # start from these weights (resume, fine-tune)
    start_epoch: int = 0  # epochs already done by the parent run: numbering continues after them
    handwriting: str | None = None  # folder of the user's labelled drawings, added to the training set
    handwriting_repeat: int = 20  # each drawing appears this many times per epoch (there are few)
    optimizer: str = "sgd"  # sgd | adam | adamw
    nesterov: bool = False  # sgd: Nesterov momentum (needs momentum above 0)
    milestones: tuple[int, ...] = ()  # multistep: the epochs after which the rate is multiplied by gamma
    warmup_pct: float = 0.25  # onecycle: share of the steps that warm up from lr / 10 to lr
    final_div: float = 100.0  # onecycle: the last rate is the first one divided by this
    warmup_epochs: int = 0  # cosine: epochs of linear warm-up from lr / 10 before the cosine decay to 0
    patience: int = 2  # plateau: epochs without a better test loss before the rate is multiplied by gamma
    clip_grad: float = 0.0  # clip the gradients' total norm to this; 0 = off
    rotate: float = 0.0  # augmentation: random rotation up to +- this many degrees
    translate: float = 0.0  # augmentation: random shift up to +- this many pixels, each way
    scale: float = 0.0  # augmentation: random zoom within 1 +- this
    shear: float = 0.0  # augmentation: random shear up to +- this many degrees
    erase: float = 0.0  # augmentation: the share of images in which a random patch is erased (cutout)
    val_split: int = 0  # training images held out (a fixed, seeded choice) to choose best.pt on; 0 = none

    def __post_init__(self):
        object.__setattr__(self, "milestones", _whole_tuple("milestones", self.milestones))
        self.validate()

    def augmentation(self) -> dict:
        """The augmentation as it is applied: the separate controls, with `augment`, the shorthand,
        filling rotation, shift and scale where they are 0."""
        a = self.augment
        return {"rotate": self.rotate or a, "translate": self.translate or a / 4, "scale": self.scale or a / 100,
                "shear": self.shear, "erase": self.erase}

    def validate(self) -> None:
        def whole(name, lo, hi=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name.replace('_', '-')} must be a whole number, got {v!r}")
            if v < lo or (hi is not None and v > hi):
                rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                raise ConfigError(f"{name.replace('_', '-')} is {v}: it must be {rng}")

        def number(name, lo, hi, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ConfigError(f"{name.replace('_', '-')} must be a number, got {v!r}")
            if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
                lo_s = f"above {lo:g}" if lo_open else f"at least {lo:g}"
                hi_s = f"below {hi:g}" if hi_open else f"at most {hi:g}"
                raise ConfigError(f"{name.replace('_', '-')} is {v:g}: it must be {lo_s} and {hi_s}")

        whole("epochs", 1, 500)
        whole("batch_size", 1, 60000)
        whole("eval_batch_size", 1, 100000)
        whole("step_size", 1)
        whole("start_epoch", 0, 100000)
        whole("handwriting_repeat", 1, 1000)
        number("ema", 0.0, 1.0, hi_open=True)
        whole("seed", 0, 2**63 - 1)
        number("lr", 0.0, 10.0, lo_open=True)
        number("momentum", 0.0, 1.0, hi_open=True)
        number("weight_decay", 0.0, 1.0)
        number("gamma", 0.0, 1.0, lo_open=True)
        number("augment", 0.0, 45.0)
        number("label_smoothing", 0.0, 1.0, hi_open=True)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler {self.scheduler!r} is unknown: choose one of {', '.join(SCHEDULERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is unknown: choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is unknown: choose one of {', '.join(DEVICES)}")
        whole("val_split", 0, 30000)
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                whole(name, 1)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
        for name in ("nesterov", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name.replace('_', '-')} must be true or false, got {getattr(self, name)!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("nesterov needs the SGD optimizer with momentum above 0")
        number("warmup_pct", 0.0, 1.0, lo_open=True, hi_open=True)
        number("final_div", 1.0, 1e6)
        whole("warmup_epochs", 0, max(self.epochs - 1, 0))
        whole("patience", 0, 100)
        number("clip_grad", 0.0, 1e6)
        number("rotate", 0.0, 180.0)
        number("translate", 0.0, 14.0)
        number("scale", 0.0, 0.9)
        number("shear", 0.0, 60.0)
        number("erase", 0.0, 1.0)
        if self.scheduler == "multistep":
            if not self.milestones:
                raise ConfigError("the multistep schedule needs milestones: the epochs after which the rate decays, "
                                  "e.g. 5,10")
            for m in self.milestones:
                if not 1 <= m < self.epochs:
                    raise ConfigError(f"milestone {m} is not before the last epoch: each must be between 1 and "
                                      f"{self.epochs - 1} for {self.epochs} epochs")
            if list(self.milestones) != sorted(set(self.milestones)):
                raise ConfigError(f"milestones must go up, each once: got {','.join(map(str, self.milestones))}")
        elif self.milestones:
            raise ConfigError(f"milestones go with the multistep schedule, not {self.scheduler}")
        if self.warmup_epochs and self.scheduler != "cosine":
            raise ConfigError(f"warmup-epochs goes with the cosine schedule, not {self.scheduler} "
                              f"(OneCycle warms up by its warmup-pct)")

    def recipe(self) -> dict:
        """What a card and a comparison need to know of the recipe: the settings that apply."""
        return recipe_of(self)

    def recipe_text(self) -> str:
        """The recipe on one line: 'optimizer: sgd; lr 0.2; momentum 0.9; schedule: OneCycle, ...'."""
        return "; ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in self.recipe().items())


def _whole_tuple(name: str, value) -> tuple:
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise ConfigError(f"{name} must be whole numbers, got {list(value)!r}")
        return tuple(value)
    raise ConfigError(f"{name} must be a list of whole numbers, got {value!r}")


def recipe_of(t: TrainConfig) -> dict:
    """The settings of t that take effect, in words a card can use (a schedule's own settings only
    when it is that schedule, augmentation only when on)."""
    out = {"optimizer": t.optimizer + (" (Nesterov)" if t.nesterov else ""), "lr": t.lr}
    if t.optimizer == "sgd":
        out["momentum"] = t.momentum
    if t.weight_decay:
        out["weight decay"] = t.weight_decay
    out["schedule"] = {
        "none": "constant rate",
        "step": f"StepLR x{t.gamma:g} every {t.step_size} epochs",
        "multistep": f"x{t.gamma:g} after epochs {', '.join(map(str, t.milestones))}",
        "onecycle": f"OneCycle, {t.warmup_pct:.0%} warm-up, final rate lr/{10 * t.final_div:g}",
        "cosine": "cosine to 0" + (f" after {t.warmup_epochs} warm-up epochs" if t.warmup_epochs else ""),
        "plateau": f"x{t.gamma:g} when the test loss has not improved for {t.patience} epochs",
    }[t.scheduler]
    aug = t.augmentation()
    parts = [f"rotation {aug['rotate']:g}°" if aug["rotate"] else "", f"shift {aug['translate']:g} px" if aug["translate"] else "",
             f"scale {aug['scale']:g}" if aug["scale"] else "", f"shear {aug['shear']:g}°" if aug["shear"] else "",
             f"erasing {aug['erase']:g}" if aug["erase"] else ""]
    out["augmentation"] = ", ".join(p for p in parts if p) or "none"
    if t.label_smoothing:
        out["label smoothing"] = t.label_smoothing
    if t.clip_grad:
        out["gradient clipping"] = t.clip_grad
    if t.ema:
        out["weight average (EMA)"] = t.ema
    return out


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# The recipe of the small presets: what takes them to 99.4% in 15 epochs (BENCHMARKS.md).
LEAN_RECIPE = TrainConfig(epochs=15, batch_size=128, lr=0.2, scheduler="onecycle", rotate=6.0, translate=1.5,
                          scale=0.06, weight_decay=1e-4, precision="auto", ema=0.998)

# The models under 5,000 parameters (micro, nano) take that recipe at a higher peak rate.
SMALLEST_RECIPE = replace(LEAN_RECIPE, lr=0.3)

# `reference` is the notebook experiment as logged: Conv-BN-ReLU, 9,596 parameters, batch 64,
# 15 epochs, plain SGD at lr 0.01 with momentum 0.9, no schedule and no augmentation (its
# test accuracy wanders up to the last epoch, which a decaying schedule would not show).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "reference",
            "The reference notebook experiment: 9,596 parameters, batch 64, SGD 0.01/0.9, 15 epochs.",
        ),
        Preset(
            "lean",
            "7,724 parameters, 99.4% test accuracy: rotation augmentation, OneCycle, batch 128, bf16 autocast.",
            ModelConfig.template((12, 16, 10, 12, 16, 18)),
            LEAN_RECIPE,
        ),
        # Speed from the shape: one 3x3 convolution at full size, then max-pool, so the costly full-size
        # activations are 12 channels once (BENCHMARKS.md: time to accuracy). Channels-last would slow it:
        # its first width is not a multiple of 16.
        Preset(
            "fast",
            "7,348 parameters, 99.4% test accuracy in about 30 s on two CPU cores with bf16: max-pool after the first "
            "convolution, 8 epochs of OneCycle at lr 0.4.",
            ModelConfig.parse("conv12 bn relu maxpool conv16 bn relu conv16 bn relu maxpool conv20 bn relu conv10k1 gap"),
            replace(LEAN_RECIPE, epochs=8, lr=0.4),
        ),
        Preset(
            "micro",
            "4,808 parameters, 99.4% test accuracy: two 3x3 convolutions of 8 channels before the first max-pool, "
            "lean's recipe at lr 0.3.",
            ModelConfig.parse("conv8 bn relu conv8 bn relu maxpool conv12 bn relu conv12 bn relu maxpool "
                              "conv16 bn relu conv10k1 gap"),
            SMALLEST_RECIPE,
        ),
        Preset(
            "nano",
            "3,972 parameters, 99.4% test accuracy: micro's shape with 10 channels in the middle pair, micro's recipe.",
            ModelConfig.parse("conv8 bn relu conv8 bn relu maxpool conv10 bn relu conv10 bn relu maxpool "
                              "conv16 bn relu conv10k1 gap"),
            SMALLEST_RECIPE,
        ),
        # Other shapes from the public assignment space, each under 8,000 parameters, on lean's recipe
        Preset(
            "padded",
            "7,248 parameters: padded 3x3 stacks at full size with two 1x1 transition blocks, each before a max-pool.",
            ModelConfig.parse("conv8p1 bn relu conv8p1 bn relu conv12p1 bn relu conv8k1 maxpool "
                              "conv12p1 bn relu conv16p1 bn relu conv8k1 maxpool conv12p1 bn relu conv16 bn relu "
                              "gap conv10k1"),
            LEAN_RECIPE,
        ),
        Preset(
            "strided",
            "7,280 parameters: strided 3x3 convolutions (stride 2) in place of max-pool; the 1x1 head before GAP.",
            ModelConfig.parse("conv8 bn relu conv16s2p1 bn relu conv12p1 bn relu conv16s2p1 bn relu "
                              "conv16 bn relu conv10k1 gap"),
            LEAN_RECIPE,
        ),
        Preset(
            "separable",
            "5,080 parameters: depthwise-separable blocks (a depthwise 3x3, then a 1x1) after one plain 3x3.",
            ModelConfig.parse("conv16 bn relu conv16dw bn relu conv24k1 bn relu maxpool conv24dw bn relu "
                              "conv32k1 bn relu conv32dw bn relu conv32k1 bn relu conv32dw bn relu conv32k1 bn relu "
                              "gap conv10k1"),
            LEAN_RECIPE,
        ),
        Preset(
            "quick",
            "The reference model on 6,000 images for 2 epochs: a minute-scale smoke test.",
            ModelConfig(),
            TrainConfig(epochs=2, batch_size=64, lr=0.05, scheduler="onecycle", limit_train=6000, limit_test=2000),
        ),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset {name!r} is unknown: choose one of {', '.join(PRESETS)}") from None


def model_config_from_dict(d: dict) -> ModelConfig:
    return ModelConfig.from_dict(d)


def train_config_from_dict(d: dict) -> TrainConfig:
    return _from_dict(TrainConfig, d)


# -- a recipe in a link ---------------------------------------------------------------------------
# The settings that differ from TrainConfig's defaults, as "key=value" pairs joined by ";":
# "epochs=15;lr=0.05;scheduler=onecycle;milestones=5/10;nesterov=1;limit_train=2000". A run's own
# state (its starting weights, its epoch offset, its drawings) never goes in a link.

LINK_LIMIT = 2000  # characters: a longer recipe is not one of ours
NOT_IN_LINKS = ("init_checkpoint", "start_epoch", "handwriting", "handwriting_repeat")


def recipe_link(t: TrainConfig) -> str:
    default = TrainConfig()
    parts = []
    for f in fields(TrainConfig):
        v = getattr(t, f.name)
        if f.name in NOT_IN_LINKS or v == getattr(default, f.name):
            continue
        text = ("1" if v else "0") if isinstance(v, bool) else "/".join(map(str, v)) if isinstance(v, tuple) \
            else "none" if v is None else repr(v) if isinstance(v, float) else str(v)
        parts.append(f"{f.name}={text}")
    return ";".join(parts)


def recipe_from_link(text: str) -> TrainConfig:
    """The recipe a link holds; ConfigError naming the first part that is not a setting or its value."""
    if not isinstance(text, str) or len(text) > LINK_LIMIT:
        raise ConfigError(f"the recipe is not a recipe: more than {LINK_LIMIT} characters")
    default = TrainConfig()
    names = {f.name for f in fields(TrainConfig)} - set(NOT_IN_LINKS)
    values = {}
    for part in filter(None, text.split(";")):
        key, sep, raw = part.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"{part[:40]!r} is not a setting of the recipe")
        kind = getattr(default, key)
        try:
            if key in ("limit_train", "limit_test"):
                values[key] = None if raw == "none" else int(raw)
            elif isinstance(kind, bool):
                values[key] = {"1": True, "0": False}[raw]
            elif isinstance(kind, int):
                values[key] = int(raw)
            elif isinstance(kind, float):
                values[key] = float(raw)
            elif isinstance(kind, tuple):
                values[key] = tuple(int(m) for m in raw.split("/")) if raw else ()
            else:
                values[key] = raw
        except (ValueError, KeyError):
            raise ConfigError(f"{key}: {raw[:40]!r} is not a value it takes") from None
    return TrainConfig(**values)


def _from_dict(cls, d):
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


__all__ = [
    "ConfigError",
    "OPTIMIZERS",
    "ModelConfig",
    "TrainConfig",
    "Preset",
    "PRESETS",
    "get_preset",
    "asdict",
    "replace",
    "model_config_from_dict",
    "train_config_from_dict",
]
