"""lifelong-report on real tiny sweeps: rows, columns, mean ± std, missing, empty and diverged cells."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from statistics import mean, stdev

import pandas as pd
import pytest
import yaml

from lifelong.report.cli import main as report
from lifelong.report.collect import Run, collect_runs, group_runs
from lifelong.report.plots import _mean_matrix
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run_sweep(sweep_dir, *overrides):
    done = subprocess.run(
        [sys.executable, "-m", "lifelong.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run_sweep(tmp_path_factory.mktemp("sweep"), "experiment=smoke", "data.num_stages=2",
                     "trainer.steps_per_stage=3", "method=finetune,ewc", "tgl=none,freeze", "seed=0,1")


@pytest.fixture(scope="module")
def twiki_sweep(tmp_path_factory):
    """TemporalWiki (no `new` probes) from an absolute data.root, which nests every job dir, over two lrs."""
    return run_sweep(tmp_path_factory.mktemp("twiki"), "experiment=smoke", "data=temporalwiki",
                     f"data.root={REPO / 'tests' / 'fixtures' / 'temporalwiki'}", "data.stages=[0809,0910]",
                     "data.seq_len=64", "trainer.steps_per_stage=2",
                     "trainer.lr=1e-4,1e-2", "seed=0,1")


def overrides_of(run_dir):
    return dict(o.split("=", 1) for o in yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text()))


def results_by(sweep_dir, *keys):
    """Each run's results.json by the values of its overrides `keys`."""
    out = {}
    for path in sweep_dir.rglob("results.json"):
        overrides = overrides_of(path.parent)
        out.setdefault(tuple(overrides[key] for key in keys), []).append(json.loads(path.read_text()))
    return out


def test_table_rows_columns_and_mean_std(sweep, tmp_path):
    assert report([str(sweep), "--out", str(tmp_path), "--format", "md,csv,tex"]) == 0
    table = pd.read_csv(tmp_path / "main.csv", index_col=0)
    assert sorted(table.index) == ["ewc / freeze", "ewc / none", "finetune / freeze", "finetune / none"]
    assert list(table.columns) == [f"{c}_{s}" for s in ("mean", "std")
                                   for c in ("changed", "unchanged", "new", "forgetting", "fuar", "avg")] + ["seeds"]
    for (method, tgl), runs in results_by(sweep, "method", "tgl").items():
        assert len(runs) == 2 and table.loc[f"{method} / {tgl}", "seeds"] == 2
        changed = [r["probe_sets"]["changed"]["final"] for r in runs]
        assert table.loc[f"{method} / {tgl}", "changed_mean"] == pytest.approx(mean(changed))
        assert table.loc[f"{method} / {tgl}", "changed_std"] == pytest.approx(stdev(changed))
        assert table.loc[f"{method} / {tgl}", "fuar_mean"] == pytest.approx(mean(r["fuar"] for r in runs))
        finals = [mean(r["probe_sets"][n]["final"] for n in ("changed", "unchanged", "new")) for r in runs]
        assert table.loc[f"{method} / {tgl}", "avg_mean"] == pytest.approx(mean(finals))
    markdown = (tmp_path / "main.md").read_text()
    best = table["new_mean"].idxmin()
    assert f"**{table.loc[best, 'new_mean']:.2f} ± {table.loc[best, 'new_std']:.2f}**" in markdown
    assert r"\textbf{" in (tmp_path / "main.tex").read_text()
    assert (tmp_path / "heatmap_ewc_freeze.png").exists() and (tmp_path / "localization_profile.png").exists()


def test_transfer_table_marks_the_best_in_each_metrics_direction(sweep, tmp_path):
    assert report([str(sweep), "--table", "transfer", "--out", str(tmp_path), "--format", "md,csv"]) == 0
    table = pd.read_csv(tmp_path / "transfer.csv", index_col=0)
    for (method, tgl), runs in results_by(sweep, "method", "tgl").items():
        for name in ("changed", "unchanged", "new"):
            for column, key in ((f"bwt_{name}", "backward_transfer"), (f"fwt_{name}", "forward_transfer")):
                values = [v for r in runs if (v := r["probe_sets"][name][key]) is not None]  # None: no probes
                cell = table.loc[f"{method} / {tgl}", f"{column}_mean"]
                assert cell == pytest.approx(mean(values)) if values else math.isnan(cell)
    markdown = (tmp_path / "transfer.md").read_text()
    marked = 0
    for column in (c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")):
        means = table[f"{column}_mean"]
        if means.notna().any():  # a probe set a 2-stage run has at both ends
            best = means.idxmin()  # changes in log-perplexity: lower is better
            assert f"**{means[best]:.2f} ± {table.loc[best, f'{column}_std']:.2f}**" in markdown
            marked += column.startswith("bwt_")
    assert marked
    assert report([str(sweep), "--table", "accuracy", "--out", str(tmp_path)]) == 2  # no TempLAMA run


def test_one_seed_shows_its_value_without_a_spread(tmp_path):
    sweep_dir = run_sweep(tmp_path / "sweep", "experiment=smoke", "data.num_stages=2", "trainer.steps_per_stage=1",
                          "seed=0")
    assert report([str(sweep_dir), "--out", str(tmp_path / "report"), "--format", "md,csv"]) == 0
    table = pd.read_csv(tmp_path / "report" / "main.csv", index_col=0)
    assert math.isnan(table.loc["finetune / none", "changed_std"]) and table.loc["finetune / none", "seeds"] == 1
    row = next(line for line in (tmp_path / "report" / "main.md").read_text().splitlines()
               if line.startswith("| finetune / none"))
    assert "±" not in row and f"{table.loc['finetune / none', 'changed_mean']:.2f}" in row


def test_accuracy_table_of_a_templama_sweep(tmp_path):
    files = f"data.files=[{REPO / 'tests' / 'fixtures' / 'templama' / 'test.json'}]"
    sweep_dir = run_sweep(tmp_path / "sweep", "experiment=smoke", "data=templama", files, "data.seq_len=32",
                          "data.vocab_size=300", "trainer.steps_per_stage=1", "seed=0,1")
    assert report([str(sweep_dir), "--table", "accuracy", "--out", str(tmp_path / "report"), "--format", "csv"]) == 0
    table = pd.read_csv(tmp_path / "report" / "accuracy.csv", index_col=0)
    [runs] = results_by(sweep_dir, "experiment").values()
    assert "new/exact_match_mean" in table.columns and "changed/top_k_mean" in table.columns
    for key in runs[0]["accuracy"]:  # after the last stage, mean over its stages' probe sets, then over seeds
        finals = [mean(v for v in r["accuracy"][key][-1] if v is not None) for r in runs]
        assert table.loc["finetune / none", f"{key}_mean"] == pytest.approx(mean(finals))


def test_missing_run_fails_unless_allowed(sweep, tmp_path, capsys):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep, broken)
    victim = next(p for p in broken.glob("*/results.json") if "method=ewc" in p.parent.name)
    victim.unlink()
    assert report([str(broken), "--out", str(tmp_path / "a")]) == 1
    assert victim.parent.name in capsys.readouterr().err
    assert report([str(broken), "--out", str(tmp_path / "b"), "--allow-missing"]) == 0
    tgl = overrides_of(victim.parent)["tgl"]
    markdown = (tmp_path / "b" / "main.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith(f"| ewc / {tgl} "))
    assert "(incomplete)" in row
    table = pd.read_csv(tmp_path / "b" / "main.csv", index_col=0)
    assert not math.isnan(table.loc[f"ewc / {tgl}", "changed_mean"])  # the other seed remains


def test_a_diverged_seed_shows_nan_not_the_other_seeds_mean(sweep, tmp_path):
    diverged = tmp_path / "sweep"
    shutil.copytree(sweep, diverged)
    victim = next(p for p in diverged.glob("*/results.json") if "method=ewc,seed=0,tgl=none" in p.parent.name)
    results = json.loads(victim.read_text())
    results["probe_sets"]["changed"]["final"] = math.nan
    victim.write_text(json.dumps(results))  # NaN, as results.json stores it
    assert report([str(diverged), "--out", str(tmp_path / "report"), "--format", "md,csv"]) == 0
    table = pd.read_csv(tmp_path / "report" / "main.csv", index_col=0)
    assert math.isnan(table.loc["ewc / none", "changed_mean"]) and math.isnan(table.loc["ewc / none", "avg_mean"])
    assert not math.isnan(table.loc["ewc / none", "unchanged_mean"])
    markdown = (tmp_path / "report" / "main.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| ewc / none "))
    assert row.split(" | ")[1] == "nan"


def test_job_dirs_nested_by_a_path_override_are_found(twiki_sweep, tmp_path):
    assert not list(twiki_sweep.glob("*/.hydra"))  # Hydra does not escape the '/' of data.root in a job dir's name
    runs = collect_runs(twiki_sweep)
    assert len(runs) == 4 and all(run.results is not None for run in runs)
    assert len({run.directory for run in runs}) == 4
    assert report([str(twiki_sweep), "--out", str(tmp_path), "--format", "csv"]) == 0


def test_an_empty_probe_set_is_na_and_left_out_of_avg(twiki_sweep, tmp_path):
    assert report([str(twiki_sweep), "--out", str(tmp_path), "--format", "md,csv"]) == 0
    table = pd.read_csv(tmp_path / "main.csv", index_col=0)
    for (lr,), runs in results_by(twiki_sweep, "trainer.lr").items():
        assert all(r["probe_sets"]["new"]["final"] is None for r in runs)
        finals = [mean(r["probe_sets"][n]["final"] for n in ("changed", "unchanged")) for r in runs]
        assert table.loc[f"finetune / none (trainer.lr={lr})", "avg_mean"] == pytest.approx(mean(finals))
    rows = [line for line in (tmp_path / "main.md").read_text().splitlines() if line.startswith("| finetune")]
    assert len(rows) == 2 and all(line.split(" | ")[3] == "n/a" for line in rows)


def test_runs_differing_in_more_than_the_seed_get_rows_of_their_own(twiki_sweep, tmp_path):
    assert report([str(twiki_sweep), "--out", str(tmp_path), "--format", "csv"]) == 0
    table = pd.read_csv(tmp_path / "main.csv", index_col=0)
    by_lr = results_by(twiki_sweep, "trainer.lr")
    assert sorted(by_lr) == [("0.0001",), ("0.01",)]
    assert sorted(table.index) == ["finetune / none (trainer.lr=0.0001)", "finetune / none (trainer.lr=0.01)"]
    for (lr,), runs in by_lr.items():
        assert len(runs) == 2
        changed = [r["probe_sets"]["changed"]["final"] for r in runs]
        assert table.loc[f"finetune / none (trainer.lr={lr})", "changed_mean"] == pytest.approx(mean(changed))
        assert table.loc[f"finetune / none (trainer.lr={lr})", "changed_std"] == pytest.approx(stdev(changed))


def test_a_sweep_relaunched_with_one_more_seed_finds_its_run_dirs(tmp_path, capsys):
    """Run dirs are named by their overrides, not the job number: seed=1 is job 0 of the first launch
    and job 1 of the second, which trains seed 0 only."""
    common = ["experiment=smoke", "data.num_stages=2", "trainer.steps_per_stage=1"]
    sweep_dir = run_sweep(tmp_path / "sweep", *common, "seed=1")
    [first] = sweep_dir.glob("*/results.json")
    finished = first.stat().st_mtime_ns
    run_sweep(sweep_dir, *common, "seed=0,1")
    assert sorted(overrides_of(p.parent)["seed"] for p in sweep_dir.glob("*/results.json")) == ["0", "1"]
    assert first.stat().st_mtime_ns == finished  # not trained again
    assert report([str(sweep_dir), "--out", str(tmp_path / "report"), "--format", "csv"]) == 0
    # launched again with seed 0 alone: the report is of that launch, and names seed 1's run as left out
    run_sweep(sweep_dir, *common, "seed=0")
    capsys.readouterr()
    assert report([str(sweep_dir), "--out", str(tmp_path / "report"), "--format", "csv"]) == 0
    assert "Left out, as no job of the sweep's last launch" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "report" / "main.csv", index_col=0)["seeds"].tolist() == [1]


def test_one_job_twice_is_refused_before_launch_and_a_copied_run_dir_by_the_report(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "lifelong.train", "-m", "experiment=smoke", "seed=0,0",
                           f"hydra.sweep.dir={tmp_path / 'twice'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "hydra.sweep.subdir" in done.stderr and "jobs 0 (" in done.stderr
    assert not (tmp_path / "twice").exists()
    sweep_dir = run_sweep(tmp_path / "sweep", "experiment=smoke", "data.num_stages=2", "trainer.steps_per_stage=1",
                          "seed=0")
    [run_dir] = [path.parent for path in sweep_dir.glob("*/results.json")]
    shutil.copytree(run_dir, sweep_dir / "copy")
    capsys.readouterr()
    assert report([str(sweep_dir), "--out", str(tmp_path / "report")]) == 2
    error = capsys.readouterr().err
    assert "two finished runs of one job" in error and str(run_dir) in error and str(sweep_dir / "copy") in error
    assert report([str(tmp_path), "--out", str(tmp_path / "report")]) == 2  # no sweep dir
    assert "is not a Hydra multirun dir (no multirun.yaml)" in capsys.readouterr().err


def test_a_job_an_older_sweep_left_unfinished_beside_its_finished_dir_is_reported_finished(tmp_path):
    """Run dirs of older versions were `<job number>_<overrides>`: relaunched with more jobs, a job got
    a new number and dir, so one job may have an unfinished dir beside a finished one."""
    sweep_dir = run_sweep(tmp_path / "sweep", "experiment=smoke", "data.num_stages=2", "trainer.steps_per_stage=1",
                          "seed=0")
    [run_dir] = [path.parent for path in sweep_dir.glob("*/results.json")]
    unfinished = sweep_dir / f"0_{run_dir.name}"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "results.json").unlink()
    [run] = collect_runs(sweep_dir)
    assert run.directory == run_dir and run.results is not None


def test_two_runs_of_one_row_with_the_same_seed_are_an_error(tmp_path):
    """As a sweep of an older version that listed one job twice had them (e.g. seed=0,0)."""
    runs = [Run(tmp_path / name, ["seed=0"], "ewc", "none", 0, {}) for name in ("0_seed=0", "1_seed=0")]
    with pytest.raises(ValueError, match="two runs with seed 0") as error:
        group_runs(runs)
    assert all(str(run.directory) in str(error.value) for run in runs)


def test_every_cpu_preset_runs_a_tiny_version(tmp_path):
    from lifelong.config import CONF_DIR, compose_train_config
    from lifelong.launch.checks import validate_command_line
    from lifelong.train import train

    presets = [p.stem for p in (CONF_DIR / "experiment").glob("*_cpu.yaml")]
    assert presets
    for preset in presets:
        assert validate_command_line(["-m", f"experiment={preset}"]) > 1
        cfg = compose_train_config([f"experiment={preset}", "data=synthetic_tiny", "trainer.steps_per_stage=2",
                                    "trainer.log_every=1", "method=migu", "tgl=freeze"], run_dir=str(tmp_path / preset))
        assert math.isfinite(train(cfg)["probe_sets"]["new"]["final"])


def test_expected_jobs_include_a_presets_sweeper_params(tmp_path):
    from lifelong.report.collect import expected_jobs

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [experiment=paper_main_cpu, seed=0]\n"
        "  sweeper:\n    params:\n      method: finetune,ewc\n      tgl: none,freeze\n      seed: 0,1,2\n"
    )
    jobs = expected_jobs(tmp_path)
    assert len(jobs) == 4  # seed given on the command line wins over the preset's 0,1,2
    assert {frozenset(j) for j in jobs} == {
        frozenset({f"method={m}", f"tgl={t}", "experiment=paper_main_cpu", "seed=0"})
        for m in ("finetune", "ewc") for t in ("none", "freeze")
    }
    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: [tgl=glob(*), seed=0]\n  sweeper: {}\n")
    assert sorted(job[0] for job in expected_jobs(tmp_path)) == ["tgl=adaptive_lr", "tgl=freeze", "tgl=none"]


def test_heatmap_cells_average_seeds_as_the_tables_do(tmp_path):
    """A seed's empty cell (None) is skipped, a diverged seed's NaN shows as NaN (blank), as in the
    tables; before, the heatmaps averaged NaN away and showed the other seeds' mean."""
    def run(seed: int, matrix: list[list[float | None]]) -> Run:
        return Run(tmp_path, [], "ewc", "none", seed, {"probe_sets": {"changed": {"matrix": matrix}}})

    runs = [run(0, [[None, 2.0], [math.nan, 4.0]]), run(1, [[None, 6.0], [3.0, None]])]
    mean = _mean_matrix(runs, "changed")
    assert math.isnan(mean[0, 0]) and mean[0, 1] == 4.0  # no seed has [0, 0]
    assert math.isnan(mean[1, 0]) and mean[1, 1] == 4.0  # seed 0 diverged at [1, 0]; [1, 1] from seed 0 alone


def test_the_localization_profile_averages_one_row_set_and_counts_what_it_averaged(tmp_path, monkeypatch):
    """A LoRA run traces its adapters' rows only: its traces are left out of the mean, and said to be."""
    import matplotlib.axes

    from lifelong.report.plots import localization_profile

    titles = []
    set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: titles.append(text) or
                        set_title(ax, text, *a, **k))
    full = {"layers": ["embed", "layer_00", "lm_head"], "temporal": [1.0, 2.0, 3.0], "control": [1.0, 1.0, 1.0]}
    adapters = {"layers": ["layer_00", "layer_01"], "temporal": [5.0, 6.0], "control": [1.0, 1.0]}
    results = {"probe_sets": {}}
    runs = [Run(tmp_path, ["method=finetune"], "finetune", "freeze", 0, results, {"layer_00": 1.0}, [full]),
            Run(tmp_path, ["method=lora"], "lora", "freeze", 0, results, {"layer_00": 1.0}, [adapters, adapters])]
    assert localization_profile(runs, tmp_path).exists()
    assert "TGL traces: mean of 2 (1 of other rows left out)" in titles
