"""Structured configs (Hydra schemas) and validation.

Every config group in `conf/` has a dataclass schema here or next to the code it builds
(methods register their own). Type and choice errors come from OmegaConf when Hydra composes;
value errors come from `__post_init__`, which OmegaConf runs when `to_object` builds the
dataclasses. `validate_command_line` composes every job of a (multi)run before anything is
launched, so a bad override fails in the parent process with the key and what is allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    import argparse

    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.errors import OverrideParseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PACKAGE_OF_GROUP = {"method": "lifelong/methods", "tgl": "lifelong/tgl"}  # whose __init__ imports the group's schemas
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
                raise ConfigError(f"{path}{key}", node[key], _existing_keys_text(path.rstrip("."), ", ".join(fields)))
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, f"{path}{key}.")


# --- checking a command line before anything runs ---------------------------------------------


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
    return _typed(compose(overrides, source), run_dir)


def _typed(composed: DictConfig, run_dir: str | Path) -> TrainConfig:
    """The typed config of a composition (which is left as it is), without its hydra node."""
    cfg = composed.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    cfg.run_dir = str(run_dir)  # the Hydra run dir exists only once a job runs
    return to_train_config(cfg)


def _explain(error: Exception, overrides: list[str], source: ConfigSource) -> ConfigError:
    """Turn a Hydra / OmegaConf composition error into a one-line ConfigError: the key, the value
    given for it, and what is allowed (OmegaConf's message spans several lines and names no value)."""
    import re

    message = str(error)
    if error.__cause__ is not None:
        message += "\n" + str(error.__cause__)
    option = re.search(r"Could not find '([\w/]+)/(\w+)'", message)
    if option:  # an unknown option of a group; Hydra's message lists the available ones
        group = option.group(1).replace("/", ".")
        available = re.search(r"Available options in '[\w/]+':\n((?:\t.*\n?)+)", message)
        allowed = f"one of {', '.join(available.group(1).split())}" if available else _one_line(message)
        return ConfigError(group, option.group(2), allowed)
    schema = re.search(r"In '([\w/]+)/(\w+)': Could not load 'schema/", message)
    if schema:  # an option's YAML extends a schema that no imported module registered
        group, name = schema.group(1).replace("/", "."), schema.group(2)
        package = PACKAGE_OF_GROUP.get(group, "lifelong")
        return ConfigError(group, name, f"an option whose schema is registered: conf/{schema.group(1)}/{name}.yaml "
                           f"extends schema/{schema.group(1)}/{name}, which no imported module registers (import "
                           f"the module that calls register({group!r}, {name!r}, ...) in {package}/__init__.py)")
    if not source.path and not CONF_DIR.is_dir():  # installed from a wheel, say
        return ConfigError("conf/", str(CONF_DIR), "lifelong's configs, read from its checkout: install lifelong "
                           "editable from a clone (pip install -e .)")
    if f"Cannot find primary config '{source.name}'" in message:  # -cn names no config
        return ConfigError("--config-name", source.name, "a config in the search path: " + _one_line(message))
    found = re.search(r"full_key: ([\w.]+)", message) or re.search(r"override '\+?([\w.]+)", message)
    key = found.group(1) if found else "<overrides>"
    launcher = re.search(r"In '([\w/]+)'.*Key '(\w+)' not in '(\w+)Conf'", message, re.DOTALL)
    if key.startswith("hydra.launcher.") and launcher:  # cluster=example's SLURM settings, say, under another launcher
        where, setting, _ = launcher.groups()
        chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "hydra/launcher"]
        return ConfigError("hydra/launcher", chosen[-1] if chosen else "basic", f"hydra/launcher=submitit_slurm: "
                           f"{where} sets hydra.launcher.{setting}, which this launcher does not have")
    given = [o.partition("=")[2] if name == key else o for o in overrides  # `model.foo` of `model.foo.bar=1`
             if (name := o.partition("=")[0].lstrip("+~")) == key or name.startswith(key + ".")]
    quoted = re.search(r"[Vv]alue '([^']*)'", message)  # a value set by a preset, not on the command line
    value = given[-1] if given else quoted.group(1) if quoted else " ".join(overrides)
    return ConfigError(key, value, _allowed(message, key, overrides, source))


def _allowed(message: str, key: str, overrides: list[str], source: ConfigSource) -> str:
    """What OmegaConf's message says a key allows, in the words of the schemas' own checks."""
    import re

    if choices := re.search(r"expected one of \[(.*?)\]", message):
        return f"one of {choices.group(1)}"
    if kind := re.search(r"could not be converted to (\w+)", message):
        return {"Integer": "an integer", "Float": "a float"}.get(kind.group(1), kind.group(1))
    if "is not a valid bool" in message:
        return "a boolean (true or false)"
    if "is not a ListConfig, list or tuple" in message:
        return "a list, e.g. [a,b]"
    keys = _existing_keys(key, overrides, source)
    return _existing_keys_text(key.rpartition(".")[0], keys) if keys else _one_line(message)


def _existing_keys_text(parent: str, keys: str) -> str:
    return f"one of the existing keys under {parent or '<root>'}: {keys}"


def _one_line(message: str) -> str:
    """A Hydra / OmegaConf message less its blank lines and OmegaConf's object-type lines."""
    lines = (line.strip() for line in message.splitlines())
    return "; ".join(line for line in lines if line and not line.startswith(("full_key:", "object_type=",
                                                                              "reference_type=")))


def _existing_keys(key: str, overrides: list[str], source: ConfigSource) -> str:
    """For an unknown key, the keys its parent node does have; "" for a key that exists."""
    parent, _, _ = key.rpartition(".")
    try:
        node = compose([o for o in overrides if key not in o], source)
    except Exception:
        return ""
    node = OmegaConf.select(node, parent) if parent else node
    name = key.rpartition(".")[2]
    if not isinstance(node, DictConfig) or name in node or OmegaConf.is_missing(node, name):  # `in` is False for ???
        return ""
    return ", ".join(str(k) for k in node if k != "hydra")


def _parse_command_line(args: list[str]) -> argparse.Namespace:
    """Read the command line with Hydra's own parser, so every flag form (`-cn x`, `-cn=x`,
    `--config-name=x`) means what it will mean to Hydra; a usage error is a ConfigError."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def usage_error(message: str) -> None:
        raise ConfigError("<command line>", " ".join(args), f"Hydra's flags (-m, -cn NAME, -cd DIR, ...) "
                          f"before the key=value overrides ({message}; see lifelong-train --hydra-help)")

    parser.error = usage_error  # type: ignore[method-assign]  # instead of printing usage and exiting
    parsed = parser.parse_args(args)
    for flag, value in (("--config-dir", parsed.config_dir), ("--config-path", parsed.config_path)):
        if value is not None and not value.startswith("pkg://"):
            directory = Path(value) if flag == "--config-dir" else TRAIN_FILE.parent / value
            require(directory.is_dir(), flag, value, f"an existing directory ({directory} is not one)")
    return parsed


def _override_error(error: OverrideParseException) -> ConfigError:
    """One line for an argument Hydra cannot read as an override (its message spans several)."""
    key, equals, _ = error.override.partition("=")
    reasons = [line.strip() for line in str(error).splitlines()  # less its caret line and doc link
               if line.strip(" ^") and not line.startswith(("Error parsing override", "See "))]
    return ConfigError(key.lstrip("+~") if equals else "<override>", error.override,
                       f"key=value in Hydra's override grammar, after the flags ({'; '.join(reasons)})")


def _runs_no_job(parsed: argparse.Namespace) -> bool:
    """Help, --cfg, --info, shell completion and reruns compose (and report) on their own."""
    return bool(parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
                or parsed.experimental_rerun)


def _jobs(overrides: list[str], multirun: bool, source: ConfigSource) -> tuple[list[list[str]], bool]:
    """The overrides of every job, and whether Hydra runs them as a multirun: under -m, or where a
    preset sets hydra.mode=MULTIRUN. A multirun sweeps its preset's hydra.sweeper.params too."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        hydra = compose(fixed, source).hydra
    except (HydraException, OmegaConfBaseException) as error:
        raise _explain(error, fixed, source) from error
    multirun = multirun or hydra.mode == RunMode.MULTIRUN
    return job_overrides(overrides, source, hydra.sweeper.params if multirun else None), multirun


def _job_run_dir(composed: DictConfig, number: int, sweep_dir: Path | None) -> Path | None:
    """Where Hydra will run job `number` of a composition: hydra.run.dir, or in a sweep (`sweep_dir`:
    its hydra.sweep.dir, resolved once as Hydra's sweeper does, or `${now:}` could differ between
    jobs) the job's subdir. None where that depends on what only the launch knows (a subdir naming
    the SLURM job id, say)."""
    from omegaconf.errors import OmegaConfBaseException

    hydra = composed.copy().hydra  # the subdir's interpolations resolve from the root
    try:
        if sweep_dir is None:
            return Path(hydra.run.dir)
        with open_dict(hydra):
            hydra.job.num = number
        return sweep_dir / hydra.sweep.subdir
    except OmegaConfBaseException:
        return None


def validate_command_line(args: list[str]) -> int:
    """Compose and check every job the command line describes, honouring Hydra's flags.
    Returns the number of jobs (0 for a command that runs none).

    Raises ConfigError (with the key and what is allowed) on the first bad job, and on a job whose
    run dir holds another run (before Hydra writes the job's .hydra/ files there).
    """
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    parsed = _parse_command_line(args)
    if _runs_no_job(parsed):
        return 0
    source = ConfigSource(parsed.config_name or "train", parsed.config_path, parsed.config_dir)
    try:
        jobs, multirun = _jobs(parsed.overrides, parsed.multirun, source)
    except OverrideParseException as error:
        raise _override_error(error) from error
    run_dirs: dict[Path, int] = {}  # run dir -> the job that runs there
    sweep_dir: Path | None = None
    for number, job in enumerate(jobs):
        try:
            composed = compose(job, source)
            if multirun and sweep_dir is None:
                sweep_dir = Path(composed.hydra.sweep.dir)
            run_dir = _job_run_dir(composed, number, sweep_dir)
            if run_dir is not None and run_dirs.setdefault(run_dir, number) != number:
                other = run_dirs[run_dir]
                raise ConfigError("hydra.sweep.subdir", str(run_dir), (
                    f"a run dir per job: jobs {other} ({' '.join(jobs[other])}) and {number} ({' '.join(job)}) "
                    "would both run there, as they are one job or differ only in keys left out of run dir names "
                    "(hydra.job.config.override_dirname.exclude_keys: what does not change a run's results)"))
            cfg = _typed(composed, run_dir or ".")
        except (HydraException, OmegaConfBaseException) as error:
            raise _explain(error, job, source) from error
        check_input_paths(cfg, in_run_dir=bool(composed.hydra.job.chdir))
        if not (multirun and "Slurm" in str(composed.hydra.launcher.get("_target_"))):
            check_device_visible(cfg.trainer.device)  # the job runs here; a SLURM job checks on its node
        if hasattr(cfg.method, "check_model"):  # names of the model's modules (LoRA's targets)
            from lifelong.models import linear_module_names

            cfg.method.check_model(*linear_module_names(cfg.model))
        if hasattr(cfg.tgl, "block_pattern"):  # a variant that traces: the model's blocks, by their names
            check_tgl_blocks(cfg)
        if run_dir is not None:
            if sweep_dir is not None:
                _check_not_numbered(run_dir, sweep_dir)
            check_same_run(run_dir, cfg)
    return len(jobs)


def check_tgl_blocks(cfg: TrainConfig) -> None:
    """TGL ranks the model's transformer blocks: block_pattern (or the default) must find them, with
    group 1 an index, and top_k must leave some unselected. Without a block the rule would rank the
    embeddings and the rest of the model as two rows (freezing the embeddings, say)."""
    from lifelong.models import block_count

    pattern = cfg.tgl.block_pattern
    blocks = block_count(cfg.model, pattern)  # a group 1 that reads no index raises here
    require(blocks > 0, "tgl.block_pattern", pattern, "a regex whose group 1 is a block's index in the model's "
            "parameter names: " + ("it matches none" if pattern else "the default finds no h.N, layers.N or blocks.N"))
    if cfg.tgl.rule.value == "top_k":
        require(cfg.tgl.k < blocks, "tgl.k", cfg.tgl.k, f"an integer in [1, {blocks - 1}]: the model has {blocks} "
                "blocks, and selecting every block would localize nothing")


def check_device_visible(device: Device) -> None:
    if device is Device.cuda:
        import torch

        require(torch.cuda.is_available(), "trainer.device", "cuda",
                "cpu or auto: no CUDA device is visible on this machine, where the job runs")


def _check_not_numbered(run_dir: Path, sweep_dir: Path) -> None:
    """Before run dirs were named by their overrides alone, they were `<job number>_<overrides>`: a
    sweep of then, relaunched as it is, would train every run again in dirs of the new name."""
    import re

    if run_dir.exists() or not sweep_dir.is_dir() or not run_dir.is_relative_to(sweep_dir) or run_dir == sweep_dir:
        return
    name = run_dir.relative_to(sweep_dir).parts[0]
    numbered = sorted(d for d in sweep_dir.iterdir() if re.fullmatch(rf"\d+_{re.escape(name)}", d.name))
    if numbered:
        raise ConfigError("hydra.sweep.dir", str(sweep_dir), (
            f"a sweep dir whose run dirs are named by their overrides alone, not {numbered[0].name} as an older "
            f"lifelong named them: to resume them, drop the job numbers (cd {sweep_dir} && for d in [0-9]*_*; "
            'do mv "$d" "${d#*_}"; done), or relaunch into another hydra.sweep.dir'))


# keys a relaunch of a run dir may change: they do not change what the run computes (the cluster's
# size does: its ranks share the global batch); conf/train.yaml leaves them out of a sweep's run dir names
RELAUNCH_MAY_CHANGE = ("run_dir", "logger", "trainer.progress", "trainer.num_threads", "trainer.keep_host_memory",
                       "trainer.checkpoint_every", "trainer.keep_checkpoints", "cluster.partition", "cluster.account",
                       "cluster.qos", "cluster.cpus_per_task", "cluster.mem_gb", "cluster.timeout_min",
                       "cluster.array_parallelism", "cluster.signal_delay_s", "cluster.max_num_timeout")


def run_identity(cfg: DictConfig | TrainConfig) -> dict[str, Any]:
    """What makes a run this run: every leaf of its config ({"trainer.lr": 0.001, ...}, enums as
    their names) but those a relaunch may change (RELAUNCH_MAY_CHANGE)."""
    def leaves(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix.removesuffix("."): node}
        return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}

    flat = leaves(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True), "")
    return {key: value for key, value in flat.items()
            if not any(key == k or key.startswith(k + ".") for k in RELAUNCH_MAY_CHANGE)}


def save_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    """The run's resolved config, as `config.yaml` in its run dir: what check_same_run compares. Written
    atomically: a part of it would let check_same_run pass another config's relaunch."""
    from lifelong.launch.checkpoint import write_atomically

    write_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def check_same_run(run_dir: Path, cfg: TrainConfig) -> None:
    """A run dir holds one run: resuming or reusing it under another config would mix two runs'
    checkpoints, metrics and results, and rewrite its config.yaml as if it were one."""
    saved_path = run_dir / "config.yaml"
    if saved_path.exists():
        check_same_identity(run_identity(OmegaConf.load(saved_path)), run_identity(cfg), f"{run_dir} was started with")


def check_same_identity(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """A ConfigError naming the first key whose value in the `current` run identity is not the `saved` one's."""
    # keys only one side has come from another version of lifelong: they are not compared
    changed = sorted(key for key in saved.keys() & current.keys() if saved[key] != current[key])
    if changed:
        key = changed[0]
        others = f"; {', '.join(changed[1:])} differ too" if changed[1:] else ""
        raise ConfigError(key, current[key], f"{saved[key]!r}, the value {source} (a run dir holds one run: "
                          f"give a new run another hydra.run.dir{others})")


# what AutoTokenizer reads a model directory's tokenizer from
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_input_paths(cfg: TrainConfig, in_run_dir: bool = False) -> None:
    """Every model / data path of a job exists, before anything is launched. Nothing is
    downloaded: a hub id or a path on another machine gets an error naming the key to set. A job
    that runs `in_run_dir` (hydra.job.chdir=true) needs absolute paths."""
    paths = {**cfg.data.input_paths(), **({"model.path": [cfg.model.path]} if cfg.model.path else {})}
    # the directories a stream or model is read from; every other input path is a file
    directories = {cfg.model.path, *(getattr(cfg.data, key, None) for key in ("path", "root"))} - {None}
    for key, values in paths.items():
        for value in values:
            path = Path(value)
            if in_run_dir and not path.is_absolute():
                raise ConfigError(key, value, "an absolute path: hydra.job.chdir=true runs the job in its run dir, "
                                  "where a relative path is not found (or write ${hydra:runtime.cwd}/" f"{value})")
            if not path.exists():
                raise ConfigError(key, value, "an existing local path (nothing is downloaded: copy the files to "
                                  f"this machine, or change {key})")
            if path.is_dir() != (value in directories):
                wanted, found = ("a directory", "a file") if value in directories else ("a file", "a directory")
                raise ConfigError(key, value, f"{wanted} (this path is {found})")
    cache_dir = getattr(cfg.data, "cache_dir", None)
    if cache_dir is not None:  # datasets makes it (and its parents) on first use
        existing = next(p for p in (Path(cache_dir).absolute(), *Path(cache_dir).absolute().parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError("data.cache_dir", cache_dir, f"a directory this user can write, or null ({existing} is "
                              f"{'not a directory' if not existing.is_dir() else 'not writable'})")
    if cfg.model.path and not (Path(cfg.model.path) / "config.json").is_file():
        raise ConfigError("model.path", cfg.model.path, "a HF model directory, as save_pretrained writes it (this "
                          "one has no config.json)")
    if cfg.model.path and not any((Path(cfg.model.path) / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError("model.path", cfg.model.path, "a HF model directory with its tokenizer (the model's own is "
                          f"used; this one has none of {', '.join(TOKENIZER_FILES)}: tokenizer.save_pretrained there)")
