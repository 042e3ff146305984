"""Every option of every config group composes and validates; bad configs fail clearly."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import torch
from omegaconf import OmegaConf

from lifelong.config import CONF_DIR, ConfigError, TrainConfig, compose, compose_train_config
from lifelong.launch.checks import RELAUNCH_MAY_CHANGE, save_run_config, validate_command_line
from tests.conftest import FIXTURES, REPO

GROUPS = ["model", "data", "method", "tgl", "trainer", "logger", "experiment", "cluster", "hydra/launcher"]
MODEL_DIR = FIXTURES / "local_model"  # validation reads its config.json and sees a tokenizer file, no weights
# options that need more than themselves: what a user must add
REQUIRED = {
    ("model", "local"): [f"model.path={MODEL_DIR}"],
    ("data", "jsonl"): [f"data.path={FIXTURES / 'jsonl'}"],
    ("cluster", "example"): ["hydra/launcher=submitit_slurm"],
    ("experiment", "paper_main"): [f"model.path={MODEL_DIR}", f"data.path={FIXTURES / 'jsonl'}",
                                   "trainer.device=auto"],  # one run runs here, and this machine may have no GPU
    ("data", "temporalwiki"): [f"data.root={FIXTURES / 'temporalwiki'}", "data.stages=[0809,0910]",
                               "model.max_seq_len=512"],  # the stages the fixture holds
    ("data", "synthetic_large"): ["model.max_seq_len=512"],  # its 512-token blocks need as many positions
    ("data", "templama"): [f"data.files=[{FIXTURES / 'templama' / 'test.json'}]"],
    ("data", "ecbd"): [f"data.root={FIXTURES / 'ecbd'}", "data.years=[2019,2020]"],
    ("trainer", "gpu"): ["trainer.device=auto"],  # this machine may have no GPU
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: str(x)
)
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    assert validate_command_line(overrides) == 1  # a single run: the preset's sweep is not expanded


def test_groups_are_not_empty():
    for group in GROUPS:
        assert options(group), f"conf/{group} has no options"


def test_default_config_is_typed():
    typed = compose_train_config([])
    assert isinstance(typed, TrainConfig)
    assert typed.method.name == "finetune" and typed.data.kind == "synthetic"


def test_sweep_expands_to_every_job():
    assert validate_command_line(["-m", "seed=0,1,2", "model=tiny_gpt2,tiny_llama"]) == 6


def test_a_sweeps_jobs_share_one_sweep_dir_though_composed_seconds_apart(monkeypatch):
    """Hydra's sweeper resolves hydra.sweep.dir (`${now:...}`) once; each job composed on its own
    would read the clock again, and two jobs of one run dir could slip past the check."""
    import hydra.core.utils

    class Clock:  # a second later at every reading
        readings = itertools.count()

        @staticmethod
        def now() -> datetime:
            return datetime(2026, 1, 1) + timedelta(seconds=next(Clock.readings))

    monkeypatch.setattr(hydra.core.utils, "datetime", Clock)
    with pytest.raises(ConfigError, match="would both run there"):
        validate_command_line(["-m", "trainer.num_threads=1,2"])


def test_an_install_without_the_checkouts_configs_says_to_install_editable(monkeypatch, tmp_path):
    import lifelong.config
    import lifelong.launch.checks

    for module in (lifelong.config, lifelong.launch.checks):  # where a wheel's would be
        monkeypatch.setattr(module, "CONF_DIR", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"conf/=.*absent': allowed is lifelong's configs.*pip install -e"):
        validate_command_line(["seed=1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_a_local_launch_but_not_a_slurm_one():
    """A SLURM job runs on a node whose GPUs the submitting host need not have."""
    with pytest.raises(ConfigError, match=r"trainer\.device='cuda'.*no CUDA device is visible on this machine"):
        validate_command_line(["trainer=gpu"])
    assert validate_command_line(["-m", "trainer=gpu", "hydra/launcher=submitit_slurm", "cluster=local"]) == 1
    with pytest.raises(ConfigError, match="no CUDA device"):  # a single run runs here, whatever the launcher
        validate_command_line(["trainer=gpu", "hydra/launcher=submitit_slurm", "cluster=local"])


def test_a_glob_over_a_groups_options_is_expanded_as_hydra_does():
    assert validate_command_line(["-m", "tgl=glob(*)"]) == 3
    assert validate_command_line(["-m", "tgl=glob(*,exclude=none)", "seed=0,1"]) == 4


def test_a_presets_sweeper_params_are_validated_too():
    assert validate_command_line(["-m", "experiment=paper_main_cpu"]) == 7 * 3 * 3
    assert validate_command_line(["-m", "experiment=paper_main_cpu", "seed=0"]) == 7 * 3
    with pytest.raises(ConfigError, match="method.mask_fraction"):
        validate_command_line(["-m", "experiment=paper_main_cpu", "method.mask_fraction=2"])


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["trainer.lr=-0.1"], "trainer.lr", "> 0"),
        (["trainer.lr=fast"], "trainer.lr", "trainer.lr='fast': allowed is a float"),
        (["seed=abc", "trainer.lr=0.1"], "seed", "seed='abc': allowed is an integer"),  # not the whole command line
        (["trainer.progress=maybe"], "trainer.progress", "a boolean (true or false)"),
        (["seed=-1"], "seed", "[0, 2**32 - 1]"),
        (["-m", "trainer.lrr=1", "seed=0,1"], "trainer.lrr", "one of the existing keys under trainer: device"),
        (["cluster=example"], "hydra/launcher", "hydra/launcher=submitit_slurm: cluster/example sets hydra.launcher"),
        (["trainer.precision=fp8"], "trainer.precision", "trainer.precision='fp8': allowed is one of fp32, bf16, fp16"),
        (["trainer.schedule=linear"], "trainer.schedule", "cosine, constant"),
        (["data.change_fraction=1.5"], "data.change_fraction", "(0, 1)"),
        (["method=sgd"], "method", "finetune"),
        (["+trainer.learning_rate=1"], "trainer.learning_rate", "steps_per_stage"),
        (["trainer.learning_rate=1"], "trainer.learning_rate", "steps_per_stage"),
        (["model.n_head=3"], "model.n_head", "divisor"),
        (["model=local"], "model.path", "required"),
        (["-m", "seed=0,1", "trainer.lr=0.1,-1"], "trainer.lr", "> 0"),
        (["-m", "seed=0", "trainer.num_threads=1,2"], "hydra.sweep.subdir", "jobs 0 (seed=0 trainer.num_threads=1) "
         "and 1 (seed=0 trainer.num_threads=2) would both run there"),  # threads are left out of run dir names
        (["data=ecbd", "data.root=/absent/ecbd"], "data.root", "nothing is downloaded"),
        (["data=ecbd", f"data.root={FIXTURES / 'ecbd'}", "data.years=[2019,2031]"], "data.years",
         "2031/np_spans_test.json"),
        (["data=temporalwiki", f"data.root={FIXTURES / 'temporalwiki'}", "data.stages=[0809,1213]",
          "model.max_seq_len=512"], "data.stages", "TWiki_Diffsets/wikipedia_1213_gpt2.csv"),
        (["data=templama", f"data.files=[{FIXTURES / 'templama' / 'test.json'},/absent/t.json]"], "data.files",
         "/absent/t.json"),
        (["data=temporalwiki", f"data.root={FIXTURES / 'temporalwiki'}", "data.stages=[]"], "data.stages",
         "a non-empty list"),  # a stream of no stage: it crashed after claiming the run dir
        (["data=ecbd", f"data.root={FIXTURES / 'ecbd'}", "data.years=[]"], "data.years", "a non-empty list"),
        (["data=templama", "data.files=[]"], "data.files", "a non-empty list"),
        (["data=templama", f"data.files=[{FIXTURES / 'templama'}]"], "data.files", "a file (this path is a directory)"),
        (["data=ecbd", f"data.root={FIXTURES / 'ecbd' / '2019' / 'np_spans_test.json'}"], "data.root",
         "a directory (this path is a file)"),
        (["model=local", f"model.path={MODEL_DIR / 'config.json'}"], "model.path", "a directory (this path is a file)"),
        (["hydra.job.chdir=true", "data=templama", "data.files=[t.json]"], "data.files",
         "an absolute path: hydra.job.chdir=true runs the job in its run dir"),
        (["data=jsonl", f"data.path={FIXTURES / 'jsonl'}", f"data.cache_dir={MODEL_DIR / 'config.json' / 'cache'}"],
         "data.cache_dir", "config.json is not a directory"),
        (["data=templama", "data.files=/etc/passwd"], "data.files", "allowed is a list, e.g. [a,b]"),  # a ??? key
        (["data=jsonl", "data.path=${oc.env:NOPE_XYZ}"], "data.path", "Environment variable 'NOPE_XYZ' not found"),
        (["model=local", "model.path=gpt2"], "model.path", "or change model.path"),  # a hub id, offline
        (["model=local", f"model.path={FIXTURES}"], "model.path", "has no config.json"),  # the parent dir, say
        (["data=jsonl", f"data.path={FIXTURES / 'jsonl' / '2019'}"], "data.path", "one sub-directory per stage"),
        (["data=jsonl", f"data.path={FIXTURES}"], "data.path", f"{FIXTURES / 'ecbd' / 'train.jsonl'}"),  # no stage file
        (["data.seq_len=256"], "data.seq_len", "[1, 128], the model's longest input (model.max_seq_len)"),
        (["method=lora", "method.target_modules=[c_attn,foo]"], "method.target_modules", "c_attn, c_fc, c_proj"),
        (["method=lora_migu", "model=tiny_llama", "method.target_modules=[mlp]"], "method.target_modules",
         "down_proj, gate_proj"),  # a module, but not a linear layer
        (["method=lora", "method.target_modules=[c_attn,lm_head]", "method.merge_each_stage=true"],
         "method.target_modules", "lm_head shares one"),  # GPT-2's lm_head is wte's weight: a merge changes both
        (["method=lora", "method.target_modules=[]"], "method.target_modules", "null for the family's default"),
        (["tgl=freeze", r"tgl.block_pattern=h\."], "tgl.block_pattern", "no group"),
        (["tgl=freeze", r"tgl.block_pattern='h\.(\d+'"], "tgl.block_pattern", "not a regex"),
        (["tgl=freeze", "tgl.rule=top_k", "tgl.k=4"], "tgl.k", "[1, 3]: the model has 4 blocks"),
        (["tgl=freeze", r"tgl.block_pattern='mlp\.(\d+)\.'"], "tgl.block_pattern", "it matches none"),
        (["method=lora", "method.from_stage=4"], "method.from_stage", "[0, 3]"),
        (["tgl=freeze", "data.num_stages=2", "tgl.from_stage=2"], "tgl.from_stage", "[0, 1]"),
        (["data=jsonl", f"data.path={FIXTURES / 'jsonl'}", "method=lora_migu", "method.from_stage=2"],
         "method.from_stage", "[0, 1]"),  # one stage per sub-directory
        (["foo"], "<override>", "missing EQUAL"),
        (["trainer.lr=[1,2"], "trainer.lr", "override grammar"),
        (["seed=1", "-m", "seed=2"], "<command line>", "unrecognized arguments: seed=2"),
        (["-cn", "nope"], "--config-name", "Cannot find primary config 'nope'"),
        (["-cd", "/absent/conf", "seed=1"], "--config-dir", "an existing directory"),
    ],
)
def test_bad_config_names_key_and_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as error:
        validate_command_line(overrides)
    assert error.value.key == key
    assert key in str(error.value) and allowed in str(error.value)
    assert "\n" not in str(error.value)  # one line on the terminal


@pytest.mark.parametrize(("arg", "expected"), [("trainer.lr=-1", "> 0"), ("foo", "missing EQUAL")])
def test_cli_rejects_bad_config_before_running(tmp_path, arg, expected):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "lifelong.train", arg, f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("Config error:") and len(done.stderr.strip().splitlines()) == 1  # no traceback
    assert arg.partition("=")[0] in done.stderr and expected in done.stderr
    assert not run_dir.exists()


def test_hydras_cfg_flag_composes_the_schemas(tmp_path):
    """--cfg (and --help) skip validate_command_line, whose imports would otherwise register the method
    and TGL schemas."""
    done = subprocess.run([sys.executable, "-m", "lifelong.train", "--cfg", "job", "method=replay", "tgl=freeze",
                           "seed=7"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job = OmegaConf.create(done.stdout)
    assert (job.method.name, job.tgl.name, job.method.seed) == ("replay", "freeze", 7)  # replay draws by the run's seed


@pytest.mark.parametrize("key", ["n_positions", "max_position_embeddings", "max_seq_len"])  # the last: MPT's
def test_a_local_models_config_json_bounds_seq_len(tmp_path, key):
    (tmp_path / "config.json").write_text(json.dumps({key: 256}))
    local = ["model=local", f"model.path={tmp_path}"]
    with pytest.raises(ConfigError, match="with its tokenizer.*none of tokenizer.json"):  # AutoTokenizer read none
        validate_command_line(local)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert validate_command_line([*local, "data.seq_len=256"]) == 1  # the preset's model.max_seq_len is ignored
    with pytest.raises(ConfigError, match=rf"\[1, 256\].*{key} in model.path") as error:
        validate_command_line([*local, "data.seq_len=257"])
    assert error.value.key == "data.seq_len"


def test_hydras_config_flags_are_honoured(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  steps_per_stage: 2\n")
    (tmp_path / "experiment" / "bad.yaml").write_text("# @package _global_\ntrainer:\n  lr: -1\n")
    for flags in (["-cn", "train"], ["-cn=train"], ["--config-name=train"], ["-cp", str(CONF_DIR)],
                  [f"--config-path={CONF_DIR}"]):
        assert validate_command_line([*flags, "-m", "seed=1,2"]) == 2, flags
    for flags in (["-cd", str(tmp_path)], [f"--config-dir={tmp_path}"]):
        assert validate_command_line([*flags, "experiment=mine"]) == 1, flags
        with pytest.raises(ConfigError, match="trainer.lr"):  # the extra directory's configs are checked too
            validate_command_line([*flags, "experiment=bad"])


@pytest.mark.parametrize("pattern", [r"(h)\.\d+\.", r"layers\.(\d+)\.|h\.(\d+)\."])
def test_a_block_pattern_whose_group_1_is_no_index_is_refused_before_launch(pattern):
    """Its group 1 reads a word, or is None in an alternation's other branch: int() failed mid-run."""
    with pytest.raises(ConfigError, match=r"tgl.block_pattern=.*group 1 is a block's index"):
        validate_command_line(["tgl=freeze", f"tgl.block_pattern='{pattern}'"])
    assert validate_command_line(["tgl=freeze", r"tgl.block_pattern='h\.(\d+)\.'"]) == 1


def test_an_option_whose_schema_no_module_registers_says_where_to_import_it(tmp_path):
    """A copied method file that __init__.py does not import: its YAML's schema is missing."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "mine.yaml").write_text("defaults:\n  - /schema/method/mine@_here_\n  - _self_\n")
    with pytest.raises(ConfigError, match=r"method='mine'.*no imported module registers.*register\('method', "
                                          r"'mine', \.\.\.\) in lifelong/methods/__init__\.py"):
        validate_command_line(["-cd", str(tmp_path), "method=mine"])


def test_a_preset_in_multirun_mode_has_its_sweep_checked(tmp_path):
    """hydra.mode=MULTIRUN in a preset sweeps without -m: every job is checked before the first runs."""
    (tmp_path / "experiment").mkdir()
    for name, lrs in (("good", "1e-3,2e-3"), ("bad", "1e-3,-1")):
        (tmp_path / "experiment" / f"{name}.yaml").write_text(
            f"# @package _global_\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      trainer.lr: {lrs}\n")
    assert validate_command_line(["-cd", str(tmp_path), "experiment=good"]) == 2
    with pytest.raises(ConfigError, match=r"trainer\.lr=-1"):
        validate_command_line(["-cd", str(tmp_path), "experiment=bad"])


def started(run_dir, overrides: list[str]) -> None:
    """A run dir as train() leaves it once started under `overrides`."""
    run_dir.mkdir(parents=True)
    save_run_config(run_dir, compose_train_config(overrides))


def test_a_run_dir_holding_another_run_is_refused_before_launch(tmp_path):
    """Before Hydra writes the job's .hydra/ files into it, and before a sweep's jobs are submitted."""
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    started(run_dir, ["trainer.lr=0.002"])
    with pytest.raises(ConfigError, match=r"trainer\.lr=0\.01.*0\.002, the value .*run was started with"):
        validate_command_line([f"hydra.run.dir={run_dir}", "trainer.lr=0.01"])
    # a sweep's second job (its run dir: hydra.sweep.dir / <its overrides>) was started otherwise
    started(sweep_dir / "seed=1", ["seed=1", "trainer.lr=0.5"])
    with pytest.raises(ConfigError, match=r"trainer\.lr=.*0\.5, the value .*/seed=1 was started with"):
        validate_command_line(["-m", f"hydra.sweep.dir={sweep_dir}", "seed=0,1"])
    # what a relaunch may change (more time, another partition) names the same run dirs and passes
    started(sweep_dir / "seed=0", ["seed=0"])
    relaunch = ["cluster.timeout_min=240", "cluster.partition=long", "trainer.progress=false"]
    assert validate_command_line([f"hydra.run.dir={run_dir}", "trainer.lr=0.002", *relaunch]) == 1
    assert validate_command_line(["-m", f"hydra.sweep.dir={sweep_dir}", "seed=0", *relaunch]) == 1
    # a sweep an older lifelong started, its run dirs named `<job number>_<overrides>`
    old_sweep = tmp_path / "old_sweep"
    started(old_sweep / "0_seed=0", ["seed=0"])
    with pytest.raises(ConfigError, match=r"hydra\.sweep\.dir=.*not 0_seed=0 as an older lifelong.*mv"):
        validate_command_line(["-m", f"hydra.sweep.dir={old_sweep}", "seed=0,1"])
    subprocess.run(["bash", "-c", 'for d in [0-9]*_*; do mv "$d" "${d#*_}"; done'], cwd=old_sweep, check=True)
    assert validate_command_line(["-m", f"hydra.sweep.dir={old_sweep}", "seed=0,1"]) == 2
    assert (old_sweep / "seed=0" / "config.yaml").exists()
    composed = compose(["seed=3", *relaunch])
    assert composed.hydra.job.override_dirname == "seed=3"
    excluded = set(composed.hydra.job.config.override_dirname.exclude_keys)
    assert set(RELAUNCH_MAY_CHANGE) - {"run_dir"} <= excluded
    # Hydra matches whole keys: `logger` leaves `logger.mode=offline` in the dir name, and a relaunch
    # with logger.mode=disabled trained every run again in new dirs
    wandb = compose(["logger=wandb"]).logger
    assert {f"logger.{key}" for key in wandb if key != "kind"} <= excluded


def test_every_yaml_starts_with_its_command():
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        if first.startswith("# @package"):
            first = path.read_text().splitlines()[1]
        assert first.startswith("# lifelong-"), f"{path} does not start with its launch command"


def test_resolved_config_round_trips(tmp_path):
    """save_run_config's config.yaml, loaded back and typed by each group's schema (named by its
    `name` / `kind`), builds a TrainConfig equal to the composed one."""
    from hydra.core.config_store import ConfigStore

    from lifelong.config import to_train_config

    composed = compose_train_config(["experiment=smoke", "method=ewc", "tgl=adaptive_lr", "seed=7",
                                     "trainer.lr=0.01", "model.n_layer=3"], run_dir=str(tmp_path))
    save_run_config(tmp_path, composed)
    loaded = OmegaConf.load(tmp_path / "config.yaml")
    typed = OmegaConf.structured(TrainConfig)
    for group, key in (("data", "kind"), ("method", "name"), ("tgl", "name"), ("logger", "kind")):
        schema = ConfigStore.instance().load(f"schema/{group}/{loaded[group][key]}.yaml").node
        typed[group] = OmegaConf.merge(schema, loaded[group])
    rebuilt = to_train_config(OmegaConf.merge(typed, loaded))
    assert isinstance(rebuilt, TrainConfig) and type(rebuilt.method) is type(composed.method)
    assert rebuilt == composed
    assert (rebuilt.seed, rebuilt.trainer.lr, rebuilt.model.n_layer, rebuilt.method.name) == (7, 0.01, 3, "ewc")


@pytest.mark.parametrize(("method", "tgl"), [("lora", "freeze"), ("lora_migu", "adaptive_lr")])
def test_lora_and_tgl_start_at_the_first_update_of_the_model(method, tgl):
    """from_stage null (the default): stage 1 for a model built from config, whose stage 0 trains it
    from scratch; stage 0 for a pretrained model.path model, whose stage 0 is already an update
    (paper_main sweeps methods without the key, so it cannot set it). A value given is kept."""
    chosen = [f"method={method}", f"tgl={tgl}"]
    local = [*chosen, "model=local", f"model.path={MODEL_DIR}"]
    for overrides, expected in [(chosen, (1, 1)), (local, (0, 0)), ([*local, "method.from_stage=2", "tgl.from_stage=1"],
                                                                   (2, 1))]:
        cfg = compose_train_config(overrides)
        assert (cfg.method.from_stage, cfg.tgl.from_stage) == expected, overrides
