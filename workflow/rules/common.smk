# Config loading and validation (once, before any rule runs) and the path helpers every rule uses.
import json
import os
import re
import shlex
from dataclasses import asdict

from snakemake.settings.types import DeploymentMethod

from fst import settings, warm
from fst.config import ConfigError
from fst.device import missing_here
from fst.kinds import runs as kind_runs
from fst.kinds.continual import seed_prompt_warning as continual_seed_prompt_warning
from fst.kinds.tasks import source_checks, task_files
from fst.report.build import figure_titles
from fst.sweep import resolve_points, swept_values
from fst.tasks import DATASET_NAMES


def _config_source():
    files = workflow.configfiles
    return ", ".join(str(f) for f in files) if files else "config"


try:
    # {sweep point: its resolved config}; one point "default" without a sweep. Published datasets'
    # sources are read by the main process only, not again by every cluster job on its node.
    with source_checks(workflow.is_main_process):
        POINT_CONFIG = resolve_points(
            config, workflow.source_path("../schemas/config.schema.yaml"), source=_config_source()
        )
except ConfigError as error:
    raise WorkflowError(str(error)) from None
POINTS = list(POINT_CONFIG)


def jobs_run_here():
    """Whether jobs run on this machine in Snakemake's own environment (not on a cluster, not in conda
    envs or containers)."""
    deployment = workflow.deployment_settings.deployment_method
    return workflow.local_exec and not {DeploymentMethod.CONDA, DeploymentMethod.APPTAINER} & set(deployment)


def start_warm_runner():
    """Called on start: for jobs that run here, the warm stage runner (fst.warm), whose children start
    each stage with torch, transformers and TRL already imported. FST_WARM_RUNNER=off runs without."""
    if not jobs_run_here():
        return
    path = warm.start(".snakemake/log/fst_warm_runner.log")
    if path:
        os.environ[warm.VARIABLE] = path  # the jobs' `fst` finds it there


def stop_warm_runner():
    warm.stop(os.environ.get(warm.VARIABLE))


def check_devices_here():
    """Called on start (before any job): when jobs run on this machine, in this environment, a GPU, the
    GPUs of slow.gpus or vLLM it lacks stops the run now. Not while the Snakefile is parsed: the
    executor is not known then (a cluster run from a login node without a GPU would be refused). Not
    with conda deployment: the stages run in envs/*.yaml, not in Snakemake's environment. Elsewhere
    each model stage checks its own node when it starts (fst.device.resolve, fst slow)."""
    if not jobs_run_here():
        return
    missing = sorted({p for cfg in POINT_CONFIG.values() for p in missing_here(cfg, _config_source())})
    if missing:
        raise WorkflowError("\n".join(missing))


config.clear()
config.update(POINT_CONFIG[POINTS[0]])  # keys shared by all points (experiment, arms, seeds, rounds, ...)

EXPERIMENT = config["experiment"]
RESULTS = "results"
EXP_DIR = f"{RESULTS}/{EXPERIMENT}"
RUN = f"{EXP_DIR}/{{point}}/{{arm}}/seed{{seed}}"
ROUND = f"{RUN}/round{{round}}"
AFTER = f"{RUN}/eval/after{{k}}"
POSTHOC = f"{RUN}/posthoc_gepa/after{{k}}"
REPORT_DIR = f"{EXP_DIR}/report"
SAMPLE_CACHE = f"{EXP_DIR}/shared_samples"  # evaluation draws shared by content (fst.sample_cache)
# Every run of the experiment's kinds: {folder under the point: fst.kinds.Run}; the `arm` wildcard is
# that folder (an arm's name for the main runs, continual-<arm>, plasticity-from-<init>).
RUNS = kind_runs(config)


def runs_of(kind=None):
    """The folder names of the runs of `kind` (every run without one)."""
    return [name for name, run in RUNS.items() if kind in (None, run.kind)]


MAIN_RUNS = runs_of("main")
RUN_WILDCARDS = {"point": POINTS, "arm": MAIN_RUNS, "seed": config["seeds"]}
EVAL_POINTS = range(config["rounds"] + 1)  # of the main runs
TRACKING_URI_OPTION = f"--uri {config['tracking']['uri']}" if config["tracking"]["uri"] else ""
TASK_FILES = task_files(config)  # {task name: user data file} of the tasks built from the user's files
# accelerate configs of the slow stage on several GPUs (config/accelerate/ beside the Snakefile)
ACCELERATE_DIR = os.path.join(workflow.basedir, "config", "accelerate")
ENV = "../../envs/cpu.yaml"
GPU_ENV = "../../envs/gpu.yaml"  # the model stages: a GPU each in profiles/default/, slow.gpus for slow
# The checkout, for envs/*.post-deploy.sh: Snakemake runs them from this process when it creates
# the environments, and they install the project from here.
os.environ.update(FST_REPO=workflow.basedir)


wildcard_constraints:
    point="|".join(re.escape(point) for point in POINTS),
    arm="|".join(map(re.escape, RUNS)),
    seed=r"\d+",
    round=r"\d+",
    k=r"\d+",
    task=r"[a-z0-9_]+",


def point_config(wildcards):
    """The resolved config of the job's sweep point."""
    return POINT_CONFIG[wildcards.point]


def results_root(path):
    """The results folder above a file of the results tree (where the SQLite tracking db lives)."""
    return path.split(f"/{EXPERIMENT}/")[0]


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def data_path(task):
    return f"{EXP_DIR}/data/{task}.parquet"


def dataset_files(wildcards):
    """A published dataset's local files (its path and HoVer's evidence), so that changing them reruns
    its data job; a hub source is pinned by its revision instead."""
    spec = config["datasets"].get(wildcards.task, {})
    return [spec[key] for key in ("path", "evidence") if spec.get(key)]


def dataset_source_option(wildcards):
    """`--source` with the dataset's config block, for a published dataset's family (fst.tasks.sources)."""
    if wildcards.task not in DATASET_NAMES:
        return ""
    return f"--source {shlex.quote(as_json(config['datasets'][wildcards.task]))}"


def round_dir(round_index):
    return ROUND.replace("{round}", str(round_index))


def after_dir(k):
    return AFTER.replace("{k}", str(k))


def trains_weights(run):
    return RUNS[run].trains_weights


def run_task(run, round_index):
    """The data of the task round `round_index` of `run` trains on."""
    return data_path(RUNS[run].task(round_index))


def eval_data(name):
    """The evaluation's data: "data" the current task's (KL and the test split are measured there),
    "tasks" the run's other scheduled tasks', "ood" the out-of-domain families' (not trained on)."""

    def files(wildcards):
        run, k = RUNS[wildcards.arm], int(wildcards.k)
        if name == "data":
            return data_path(run.task_after(k))
        if name == "tasks":
            return [data_path(task) for task in run.other_tasks(k)]
        return [data_path(task) for task in config["tasks"]["ood"] if task not in run.stages]

    return files


def evaluation_runtime(wildcards, attempt):
    """Minutes of an evaluation job: 60 per task it scores (a continual run scores its whole schedule),
    growing with the attempt like the profile's other limits."""
    return 60 * attempt * (1 + len(RUNS[wildcards.arm].other_tasks(wildcards.k)))


def gepa_round(cfg, run, round_index):
    """Whether round `round_index` of `run` runs GEPA (fst.kinds.Run.runs_gepa)."""
    return RUNS[run].runs_gepa(round_index, cfg["fast"]["every"], cfg["report"]["post_hoc_gepa"])


def previous_gepa_option(wildcards):
    """`--previous-gepa-dir` naming the previous round's GEPA folder, when both rounds run GEPA on one task.

    The fast stage continues that search when the weights and settings are unchanged (arm gepa),
    else starts afresh. A param, not an input: GEPA folders are working state outside the rules'
    outputs, and the previous round's population (an input) already orders the two jobs.
    """
    r, cfg = int(wildcards.round), point_config(wildcards)
    if not RUNS[wildcards.arm].continues_gepa(r, cfg["fast"]["every"], cfg["report"]["post_hoc_gepa"]):
        return ""
    run = RUN.format(point=wildcards.point, arm=wildcards.arm, seed=wildcards.seed)
    return f"--previous-gepa-dir {run}/gepa_state/round{r - 1}"


def policy_before(run, round_index):
    """θ_c: before round 0 the run's starting weights (the base model, or for a plasticity run the final
    weights of the main run it starts from); the base model always for arm gepa; else the previous
    slow output."""
    round_index, spec = int(round_index), RUNS[run]
    if round_index == 0 and spec.init is not None:
        return f"{RUN}/round{spec.init_round}/policy".replace("{arm}", spec.init)
    if round_index == 0 or not spec.trains_weights:
        return f"{EXP_DIR}/base_model"
    return f"{round_dir(round_index - 1)}/policy"


def population_before(round_index):
    """Φ_c: the seed population before round 0, else the previous round's fast output."""
    round_index = int(round_index)
    if round_index == 0:
        return f"{EXP_DIR}/{{point}}/population_seed.json"
    return f"{round_dir(round_index - 1)}/population.json"


def policy_after(wildcards):
    return policy_before(wildcards.arm, wildcards.k)


def population_after(wildcards):
    return population_before(wildcards.k)


def slow_metrics_before(wildcards):
    k = int(wildcards.k)
    return [f"{round_dir(k - 1)}/slow_metrics.json"] if k and trains_weights(wildcards.arm) else []


def round_provenance(arm, k):
    """Provenance of the stages that count policy rollouts and RL steps, in rounds before point k."""
    stages = ["fast", "rollout", "slow"] if trains_weights(arm) else ["fast"]
    return [f"{round_dir(r)}/provenance/{stage}.json" for r in range(int(k)) for stage in stages]


def round_provenance_before(wildcards):
    return round_provenance(wildcards.arm, wildcards.k)


def of_runs(pattern, kind=None):
    """`pattern` for every point and seed of every run (of `kind`, if given), k = 0..that run's rounds."""
    return [
        path
        for run in runs_of(kind)
        for path in expand(pattern, point=POINTS, arm=run, seed=config["seeds"], k=range(RUNS[run].rounds + 1))
    ]


def all_round_provenance(kind="main"):
    """The provenance of every round of every run of `kind` that counts rollouts and steps (the x-axes)."""
    return [
        path
        for run in runs_of(kind)
        for path in expand(round_provenance(run, RUNS[run].rounds), point=POINTS, arm=run, seed=config["seeds"])
    ]


def posthoc_files(name):
    """Arm rl's post-hoc GEPA evaluation ("eval") or GEPA round provenance ("provenance"), if asked for."""
    if "rl" not in MAIN_RUNS or not config["report"]["post_hoc_gepa"]:
        return []
    pattern = {"eval": f"{POSTHOC}/eval.parquet", "provenance": f"{ROUND}/provenance/fast.json"}[name]
    return expand(pattern, point=POINTS, arm="rl", seed=config["seeds"], k=config["rounds"],
                  round=config["rounds"])


def decomposition_files(name="decomposition"):
    """Arm fst's channel decomposition per run (or its samples), when the report asks for it."""
    if "fst" not in MAIN_RUNS or not config["report"]["decomposition"]:
        return []
    return expand(f"{RUN}/eval/{name}.parquet", point=POINTS, arm="fst", seed=config["seeds"])


def test_eval_inputs(name):
    """The run's validation evaluations, or the weights/prompts behind them, in round order (k = 0..R)."""

    def files(wildcards):
        if name == "evals":
            return [f"{after_dir(k)}/eval.parquet" for k in EVAL_POINTS]
        if name == "policies":
            return [policy_before(wildcards.arm, k) for k in EVAL_POINTS]
        return [population_before(k) for k in EVAL_POINTS]

    return files


def test_eval_of_final(wildcards):
    """A main run's test evaluation, mirrored with its final evaluation point."""
    run = RUNS[wildcards.arm]
    return [f"{RUN}/eval/test.parquet"] if run.kind == "main" and int(wildcards.k) == run.rounds else []


def previous_tracked(wildcards):
    """Mirror points of one run in order: MLflow calls for one run key must not overlap."""
    k = int(wildcards.k)
    return [f"{after_dir(k - 1)}/tracked.json"] if k else []


def _sampling(cfg):
    return asdict(settings.sampling(cfg))


def fast_settings(wildcards):
    cfg = point_config(wildcards)
    return {
        "gepa_round": gepa_round(cfg, wildcards.arm, wildcards.round),
        "fast": cfg["fast"],
        "reflection": cfg["reflection"],
        "sampling": _sampling(cfg),
    } | settings.runtime(cfg) | settings.engine(cfg)


def rollout_settings(wildcards):
    return settings.rollout_stage(point_config(wildcards))


def slow_settings(wildcards):
    return asdict(settings.slow(point_config(wildcards), int(wildcards.seed)))


def slow_launcher(wildcards):
    """`fst`, or `accelerate launch ... -m fst` when the point's slow.gpus > 1."""
    return settings.slow_launcher(point_config(wildcards), ACCELERATE_DIR)


def slow_resource(name):
    """One of the slow job's resources (its GPUs follow slow.gpus of the job's point)."""
    return lambda wildcards: settings.slow_resources(point_config(wildcards))[name]


def evaluate_settings(wildcards):
    cfg = point_config(wildcards)
    return _sampling(cfg) | settings.runtime(cfg) | settings.engine(cfg) | {
        key: cfg["evaluation"][key] for key in ("k", "ood_problems", "bootstrap_resamples", "bootstrap_seed")
    }


def point_params(wildcards):
    """What MLflow records for a point: its swept values, and the resolved config of its runs."""
    cfg = point_config(wildcards)
    return {"swept": swept_values(cfg), "config": cfg}


def kind_summary(kind, name="summary"):
    """A kind's summary table (or its per-problem "scores"), if the experiment runs that kind."""
    suffix = "" if kind == "main" else f"_{kind}"
    return [f"{EXP_DIR}/{name}{suffix}.parquet"] if runs_of(kind) else []


def report_kinds():
    """What the report needs to know of the kinds' runs (fst.report.build.figure_titles)."""
    spec = {"main": bool(MAIN_RUNS), "proposers": "fast.proposer" in (config["sweep"] or {})}
    if "plasticity" in config["kinds"]:
        spec["plasticity"] = {"task": RUNS[runs_of("plasticity")[0]].stages[0]}
    if "continual" in config["kinds"]:
        run = RUNS[runs_of("continual")[0]]
        spec["continual"] = {"schedule": list(run.stages), "rounds_per_stage": run.rounds_per_stage}
    return spec


def final_outputs():
    return [*rules.report.output, rules.sync_tracking.output[0]]
