"""What is checked before a job launches: `validate_command_line` composes every job of a
(multi)run in the parent process, so a bad override, a missing file or a run dir that holds
another run fails there, with the key and what is allowed, before anything is submitted. Also a
run's identity: what its run dir's `config.yaml` and its checkpoints are compared against."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lifelong.config import (
    CONF_DIR,
    TRAIN_FILE,
    ConfigError,
    ConfigSource,
    Device,
    TrainConfig,
    compose,
    existing_keys_text,
    job_overrides,
    require,
    typed_config,
)

if TYPE_CHECKING:
    import argparse

    from hydra.errors import OverrideParseException

PACKAGE_OF_GROUP = {"method": "lifelong/methods", "tgl": "lifelong/tgl"}  # whose __init__ imports the group's schemas


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
    return existing_keys_text(key.rpartition(".")[0], keys) if keys else _one_line(message)


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
            cfg = typed_config(composed, run_dir or ".")
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
