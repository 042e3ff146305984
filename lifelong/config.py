"""Structured configs (Hydra schemas), and composing them as `lifelong-train` does.

Every config group in `conf/` has a dataclass schema here or next to the code it builds
(methods register their own). Type and choice errors come from OmegaConf when Hydra composes;
value errors come from `__post_init__`, which OmegaConf runs when `to_object` builds the
dataclasses. What is checked before a job launches, across fields and on disk, is in
lifelong/launch/checks.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    from hydra.core.config_search_path import ConfigSearchPath

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TRAIN_FILE = Path(__file__).resolve().parent / "train.py"  # declares hydra.main: -cp is relative to it


class ConfigError(ValueError):
    """A config value that composes but makes no sense; names the key and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"Invalid config value {key}={value!r}: allowed is {allowed}")
        self.key = key


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def register(group: str | None, name: str, node: type) -> None:
    """Register a schema as `schema/<group>/<name>`; an option of the group extends it with
    `defaults: [/schema/<group>/<name>@_here_, _self_]`. The root schema has no group."""
    ConfigStore.instance().store(group=f"schema/{group}" if group else None, name=name, node=node)


# --- model -----------------------------------------------------------------------------------


class ModelFamily(Enum):
    gpt2 = "gpt2"
    llama = "llama"
    local = "local"  # whatever `path` holds


@dataclass
class ModelConfig:
    family: ModelFamily = ModelFamily.gpt2
    path: str | None = None  # local HF model directory; when set the preset sizes are ignored
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 512
    max_seq_len: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(
            self.family is not ModelFamily.local or bool(self.path),
            "model.path",
            self.path,
            "a local HF model directory: this key is required with model=local",
        )
        for key in ("n_layer", "d_model", "n_head", "d_ff", "max_seq_len"):
            value = getattr(self, key)
            require(value > 0, f"model.{key}", value, "an integer > 0")
        require(self.d_model % self.n_head == 0, "model.n_head", self.n_head, "a divisor of model.d_model")
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a float in [0, 1)")

    def position_limit(self) -> tuple[int, str] | None:
        """The longest input the model takes and where that is set; None when unknown yet (a
        local model without a readable config.json: building it reports that)."""
        if not self.path:
            return self.max_seq_len, "model.max_seq_len"
        return _local_position_limit(Path(self.path) / "config.json")


# GPT-2 names its number of positions n_positions (n_ctx in old files), most others
# max_position_embeddings, MPT max_seq_len
_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len")


def _local_position_limit(config_file: Path) -> tuple[int, str] | None:
    try:
        hf_config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    key = next((k for k in _POSITION_KEYS if isinstance(hf_config.get(k), int)), None)
    return (hf_config[key], f"{key} in model.path's config.json") if key else None


# --- data ------------------------------------------------------------------------------------


@dataclass
class SyntheticDataConfig:
    kind: str = "synthetic"
    seed: int = 0  # the world's seed, separate from the training seed so seeds share one world
    num_stages: int = 4
    num_entities: int = 40  # entities in the first snapshot
    new_entities_per_stage: int = 10
    change_fraction: float = 0.2  # share of existing facts whose object changes at each update
    train_renderings: int = 3  # paraphrases of each new or changed fact in a stage's corpus
    unchanged_in_train: float = 0.1  # share of unchanged facts restated in an update's corpus
    probes_per_set: int = 48
    probe_template: str = "heldout"  # heldout | trained (see lifelong/data/synthetic.py)
    seq_len: int = 128
    vocab_size: int = 512  # of the byte-level BPE tokenizer trained on the stream

    def __post_init__(self) -> None:
        require(self.num_stages >= 2, "data.num_stages", self.num_stages, "an integer >= 2")
        require(self.num_entities >= 2, "data.num_entities", self.num_entities, "an integer >= 2")
        require(
            0 < self.change_fraction < 1, "data.change_fraction", self.change_fraction, "a float in (0, 1)"
        )
        require(
            0 <= self.unchanged_in_train <= 1,
            "data.unchanged_in_train",
            self.unchanged_in_train,
            "a float in [0, 1]",
        )
        require(
            1 <= self.train_renderings <= 4, "data.train_renderings", self.train_renderings, "1 to 4 (templates)"
        )
        for key in ("new_entities_per_stage", "probes_per_set", "seq_len"):
            value = getattr(self, key)
            require(value > 0, f"data.{key}", value, "an integer > 0")
        require(self.vocab_size >= 300, "data.vocab_size", self.vocab_size, "an integer >= 300")
        require(
            self.probe_template in ("trained", "heldout"), "data.probe_template", self.probe_template,
            "trained or heldout",
        )

    def stage_count(self) -> int | None:
        return self.num_stages

    def input_paths(self) -> dict[str, list[str]]:
        return {}  # generated in-process

    def build(self):
        from lifelong.data.synthetic import generate_stream

        return generate_stream(self)


@dataclass
class JsonlDataConfig:
    kind: str = "jsonl"
    path: str = MISSING  # directory with one sub-directory per stage (see lifelong/data/jsonl.py)
    seq_len: int = 128
    vocab_size: int = 512
    cache_dir: str | None = None  # datasets' Arrow cache of the training text; None: HF_DATASETS_CACHE

    def __post_init__(self) -> None:
        require(self.seq_len > 0, "data.seq_len", self.seq_len, "an integer > 0")
        require(self.vocab_size >= 300, "data.vocab_size", self.vocab_size, "an integer >= 300")

    def stage_count(self) -> int | None:
        """None while data.path is absent (check_input_paths reports it)."""
        from lifelong.data.jsonl import stage_dirs

        root = Path(self.path)
        if not root.is_dir():
            return None
        count = len(stage_dirs(root))
        require(count > 0, "data.path", self.path, "a directory with one sub-directory per stage (it has none)")
        return count

    def input_paths(self) -> dict[str, list[str]]:
        from lifelong.data.jsonl import stage_dirs

        root = Path(self.path)
        stages = stage_dirs(root) if root.is_dir() else []
        return {"data.path": [self.path, *(str(stage / "train.jsonl") for stage in stages)]}

    def check_files(self, traced: slice) -> None:
        """Probe files of the three sets only (another would be left out unseen), and knowledge.jsonl
        in every stage TGL traces (`traced`, of the stage dirs)."""
        from lifelong.data.jsonl import DataFormatError, check_probe_files, stage_dirs

        root = Path(self.path)
        if not root.is_dir():
            return  # check_input_paths names it
        stages = stage_dirs(root)
        for stage in stages:
            try:
                check_probe_files(stage)
            except DataFormatError as error:
                raise ConfigError("data.path", self.path, str(error)) from error
        for stage in stages[traced]:
            require((stage / "knowledge.jsonl").is_file(), "data.path", self.path,
                    f"a stream with knowledge.jsonl in every stage TGL traces (tgl.from_stage on): {stage} has none "
                    "(or tgl=none)")

    def build(self):
        from lifelong.data.jsonl import load_stream

        return load_stream(Path(self.path), self.cache_dir)


@dataclass
class TemporalWikiDataConfig:
    kind: str = "temporalwiki"
    root: str = MISSING  # holds TWiki_Diffsets/ and twiki_probes/
    stages: list[str] = field(default_factory=lambda: ["0809", "0910", "1011", "1112"])
    probe_target: str = "sentence"  # sentence (TemporalWiki's protocol) | object
    seq_len: int = 512
    vocab_size: int = 512  # used only when the model has no tokenizer of its own
    cache_dir: str | None = None  # datasets' Arrow cache of the diffsets; None: HF_DATASETS_CACHE

    def __post_init__(self) -> None:
        require(self.probe_target in ("sentence", "object"), "data.probe_target", self.probe_target,
                "sentence or object")
        require(bool(self.stages) and all(len(s) == 4 and s.isdigit() for s in self.stages), "data.stages",
                list(self.stages), "a non-empty list of month pairs such as 0809")

    def stage_count(self) -> int | None:
        return len(self.stages)

    def input_paths(self) -> dict[str, list[str]]:
        from lifelong.data.temporalwiki import stage_files

        files = [str(f) for pair in self.stages for f in stage_files(Path(self.root), pair)]
        return {"data.root": [self.root], "data.stages": files}

    def build(self):
        from lifelong.data.temporalwiki import load_temporalwiki

        return load_temporalwiki(Path(self.root), list(self.stages), self.probe_target, self.cache_dir)


@dataclass
class TempLAMADataConfig:
    kind: str = "templama"
    files: list[str] = MISSING  # jsonl files, e.g. [ROOT/train.json, ROOT/val.json, ROOT/test.json]
    seq_len: int = 64
    vocab_size: int = 2048
    accuracy_top_k: int | None = 5  # greedy exact match and top-k of the object after each stage; null: off

    def __post_init__(self) -> None:
        require(self.accuracy_top_k is None or self.accuracy_top_k > 0, "data.accuracy_top_k",
                self.accuracy_top_k, "an integer > 0 or null")
        require(bool(self.files), "data.files", list(self.files), "a non-empty list of TempLAMA jsonl files")

    def stage_count(self) -> int | None:
        return None  # one stage per distinct `date` in the files: known once they are loaded

    def input_paths(self) -> dict[str, list[str]]:
        return {"data.files": list(self.files)}

    def build(self):
        from lifelong.data.templama import load_templama

        return load_templama([Path(f) for f in self.files], self.accuracy_top_k)


@dataclass
class ECBDDataConfig:
    kind: str = "ecbd"
    root: str = MISSING  # holds one directory per year
    years: list[str] = field(default_factory=lambda: ["2019", "2020", "2021"])
    spans: str = "np"  # np (ECBD-NP) | random
    split: str = "test"  # dev | test
    seq_len: int = 128
    vocab_size: int = 2048

    def __post_init__(self) -> None:
        require(self.spans in ("np", "random"), "data.spans", self.spans, "np or random")
        require(self.split in ("dev", "test"), "data.split", self.split, "dev or test")
        require(bool(self.years), "data.years", list(self.years), "a non-empty list of years")

    def stage_count(self) -> int | None:
        return len(self.years)

    def input_paths(self) -> dict[str, list[str]]:
        from lifelong.data.ecbd import year_file

        files = [str(year_file(Path(self.root), year, self.spans, self.split)) for year in self.years]
        return {"data.root": [self.root], "data.years": files}

    def build(self):
        from lifelong.data.ecbd import load_ecbd

        return load_ecbd(Path(self.root), list(self.years), self.spans, self.split)


# --- trainer ---------------------------------------------------------------------------------


class Schedule(Enum):
    cosine = "cosine"
    constant = "constant"


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


@dataclass
class TrainerConfig:
    device: Device = Device.cpu
    precision: Precision = Precision.fp32  # autocast dtype; fp16 adds a grad scaler
    steps_per_stage: int = 100  # optimizer steps per stage: the same budget for every method
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_fraction: float = 0.1
    schedule: Schedule = Schedule.cosine
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    max_grad_norm: float = 1.0  # 0 disables clipping
    eval_batch_size: int = 32
    log_every: int = 10
    checkpoint_every: int = 0  # optimizer steps between checkpoints (a multiple of log_every); 0: stage ends only
    keep_checkpoints: int = 2
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress: bool = True  # tqdm bar per stage
    keep_host_memory: bool = True  # glibc keeps freed host memory: no page faults every CPU step
    # CPU math treats subnormal floats (< 1.2e-38) as zero: AdamW's moments of weights whose gradient
    # stays zero (MIGU's masked rows, unseen tokens' embeddings) decay into them after ~800 steps, and
    # the fused CPU AdamW steps through them 2x slower (measured)
    flush_denormal: bool = True

    def __post_init__(self) -> None:
        for key in ("steps_per_stage", "micro_batch_size", "grad_accum", "eval_batch_size", "log_every"):
            value = getattr(self, key)
            require(value > 0, f"trainer.{key}", value, "an integer > 0")
        require(self.lr > 0, "trainer.lr", self.lr, "a float > 0")
        require(0 <= self.min_lr_ratio <= 1, "trainer.min_lr_ratio", self.min_lr_ratio, "a float in [0, 1]")
        require(
            0 <= self.warmup_fraction < 1, "trainer.warmup_fraction", self.warmup_fraction, "a float in [0, 1)"
        )
        require(self.weight_decay >= 0, "trainer.weight_decay", self.weight_decay, "a float >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "trainer.betas",
            list(self.betas),
            "two floats in [0, 1)",
        )
        require(self.max_grad_norm >= 0, "trainer.max_grad_norm", self.max_grad_norm, "a float >= 0")
        require(self.num_threads >= 0, "trainer.num_threads", self.num_threads, "an integer >= 0")
        require(
            self.checkpoint_every >= 0 and self.checkpoint_every % self.log_every == 0,
            "trainer.checkpoint_every",
            self.checkpoint_every,
            f"0 or a multiple of trainer.log_every ({self.log_every})",
        )
        require(self.keep_checkpoints > 0, "trainer.keep_checkpoints", self.keep_checkpoints, "an integer > 0")


# --- logger ----------------------------------------------------------------------------------


@dataclass
class JsonlLoggerConfig:
    """`metrics.jsonl` in the run dir; every logger writes it too."""

    kind: str = "jsonl"


class WandbMode(Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class WandbLoggerConfig:
    """metrics.jsonl plus a wandb run; WANDB_MODE in the environment overrides `mode`."""

    kind: str = "wandb"
    project: str = "lifelong"
    entity: str | None = None
    mode: WandbMode = WandbMode.offline
    group: str | None = None  # None: the sweep's name (the run dir's parent)
    job_type: str | None = None  # None: the method's name
    tags: list[str] = field(default_factory=list)


# --- cluster ---------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    """Where a sweep runs under `hydra/launcher=submitit_slurm` (and the local launcher's sizes)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int = 1  # = GPUs per node for DDP: one process per GPU
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    nodes: int = 1
    timeout_min: int = 60
    array_parallelism: int = 64
    signal_delay_s: int = 120  # SLURM sends USR2 this long before the time limit: checkpoint + requeue
    max_num_timeout: int = 3  # requeues after a time-out or preemption
    # setup lines and extra sbatch options are lists / dicts, which Hydra cannot interpolate into the
    # launcher's schema: a SLURM profile sets them as hydra.launcher.setup / .additional_parameters

    def __post_init__(self) -> None:
        for key in ("tasks_per_node", "nodes", "timeout_min", "array_parallelism"):
            value = getattr(self, key)
            require(value > 0, f"cluster.{key}", value, "an integer > 0")
        require(
            self.gpus_per_node is None or self.gpus_per_node in (0, self.tasks_per_node),
            "cluster.tasks_per_node",
            self.tasks_per_node,
            f"cluster.gpus_per_node ({self.gpus_per_node}): one task per GPU",
        )
        require(self.signal_delay_s >= 0, "cluster.signal_delay_s", self.signal_delay_s, "an integer >= 0")
        require(self.max_num_timeout >= 0, "cluster.max_num_timeout", self.max_num_timeout, "an integer >= 0")


# --- the whole run ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    seed: int = 0
    run_dir: str = "."  # the Hydra run dir, set by conf/train.yaml
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Groups whose options have different fields: each option extends its own schema.
    data: Any = MISSING
    method: Any = MISSING
    tgl: Any = MISSING
    logger: Any = MISSING
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32 - 1] (numpy's seeds)")
        for group in (self.method, self.tgl):  # LoRA's and TGL's first stage: the first update of a model
            if hasattr(group, "from_stage") and group.from_stage is None:  # that is pretrained, else the second
                group.from_stage = 0 if self.model.path else 1
        limit = self.model.position_limit()
        if limit is not None:  # beyond it GPT-2's position embedding has no row (an IndexError mid-run)
            require(self.data.seq_len <= limit[0], "data.seq_len", self.data.seq_len,
                    f"an integer in [1, {limit[0]}], the model's longest input ({limit[1]})")
        stages = self.data.stage_count()
        if stages is not None:
            self.check_stage_count(stages)
        if hasattr(self.data, "check_files"):  # a stream of the user's files (jsonl)
            self.data.check_files(self.traced_stages())

    def traced_stages(self) -> slice:
        """The stages TGL traces before (of the stream's): from tgl.from_stage on, or that one only
        under tgl.trace=once; none under tgl=none."""
        from_stage = getattr(self.tgl, "from_stage", None)
        if from_stage is None:
            return slice(0, 0)
        return slice(from_stage, from_stage + 1 if self.tgl.trace.value == "once" else None)

    def check_stage_count(self, num_stages: int) -> None:
        """A `from_stage` past the stream's last stage would never start LoRA / TGL: the run
        would silently be plain fine-tuning."""
        require(num_stages >= 1, "data", num_stages, "a stream of at least one stage (its files hold none)")
        for group in ("method", "tgl"):
            from_stage = getattr(getattr(self, group), "from_stage", None)
            if from_stage is not None:
                require(from_stage < num_stages, f"{group}.from_stage", from_stage,
                        f"an integer in [0, {num_stages - 1}]: the stream has {num_stages} stages")


register(None, "train_schema", TrainConfig)
register("model", "model", ModelConfig)
register("trainer", "trainer", TrainerConfig)
register("data", "synthetic", SyntheticDataConfig)
register("data", "jsonl", JsonlDataConfig)
register("data", "temporalwiki", TemporalWikiDataConfig)
register("data", "templama", TempLAMADataConfig)
register("data", "ecbd", ECBDDataConfig)
register("logger", "jsonl", JsonlLoggerConfig)
register("cluster", "cluster", ClusterConfig)
register("logger", "wandb", WandbLoggerConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Build the typed config; runs every schema's value checks."""
    import lifelong.methods  # noqa: F401  (registers method schemas)
    import lifelong.tgl  # noqa: F401

    _reject_unknown_keys(cfg, "")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "???", "a value: this key is required (set it on the command line)")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _reject_unknown_keys(node: DictConfig, path: str) -> None:
    """`+key=value` can add a key a schema lacks; name it and the keys that exist."""
    import dataclasses

    schema = OmegaConf.get_type(node)
    if schema is not None and dataclasses.is_dataclass(schema):
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in fields:
                raise ConfigError(f"{path}{key}", node[key], existing_keys_text(path.rstrip("."), ", ".join(fields)))
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, f"{path}{key}.")


def existing_keys_text(parent: str, keys: str) -> str:
    return f"one of the existing keys under {parent or '<root>'}: {keys}"


# --- composing a command line's jobs, as lifelong-train would ---------------------------------


@dataclass(frozen=True)
class ConfigSource:
    """What Hydra composes: the primary config and where it searches (lifelong-train's
    -cn / -cp / -cd flags)."""

    name: str = "train"  # -cn
    path: str | None = None  # -cp: replaces conf/; absolute, pkg://, or relative to lifelong/
    extra_dir: str | None = None  # -cd: searched before conf/ (and the schemas)

    def search_path(self) -> ConfigSearchPath:
        """The search path Hydra builds for lifelong-train (hydra/_internal/utils.py, _run_hydra)."""
        from hydra._internal.utils import compute_search_path_dir, create_config_search_path
        from hydra.core.config_search_path import SearchPathQuery

        main = compute_search_path_dir(str(TRAIN_FILE), None, self.path) if self.path else str(CONF_DIR)
        search_path = create_config_search_path(main)
        if self.extra_dir:
            search_path.prepend("command-line", f"file://{Path(self.extra_dir).resolve()}",
                                anchor=SearchPathQuery(provider="schema"))
        return search_path


@contextmanager
def _hydra_initialized(source: ConfigSource) -> Iterator[None]:
    """hydra.initialize_config_dir, with lifelong-train's whole search path rather than one dir."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    version.setbase("1.3")
    Hydra.create_main_hydra2(task_name="lifelong", config_search_path=source.search_path())
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def compose(overrides: list[str], source: ConfigSource = ConfigSource()) -> DictConfig:
    """Compose like `lifelong-train` would, without running anything."""
    from hydra import compose as hydra_compose

    import lifelong.methods  # noqa: F401
    import lifelong.tgl  # noqa: F401

    with _hydra_initialized(source):
        return hydra_compose(config_name=source.name, overrides=overrides, return_hydra_config=True)


def job_overrides(args: list[str], source: ConfigSource | None = None,
                  sweeper_params: dict[str, Any] | None = None) -> list[list[str]]:
    """Expand sweep syntax (`a=1,2 b=x,y`, `tgl=glob(*)`) into the override list of every job, as
    Hydra's basic sweeper does: a preset's hydra.sweeper.params first, then the command line's
    overrides (a key in both keeps its place and takes the command line's value). A glob over a
    group's options needs the config search path."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [*(f"{key}={value}" for key, value in (sweeper_params or {}).items()), *args]
    with _hydra_initialized(source or ConfigSource()):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        return [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(args), None) for job in batch]


def compose_train_config(overrides: list[str], run_dir: str = ".",
                         source: ConfigSource = ConfigSource()) -> TrainConfig:
    """The typed, validated config of one job, composed outside a Hydra run."""
    return typed_config(compose(overrides, source), run_dir)


def typed_config(composed: DictConfig, run_dir: str | Path) -> TrainConfig:
    """The typed config of a composition (which is left as it is), without its hydra node."""
    cfg = composed.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    cfg.run_dir = str(run_dir)  # the Hydra run dir exists only once a job runs
    return to_train_config(cfg)
