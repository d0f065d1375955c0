# Config loading and validation (once, before any rule runs) and the path helpers every rule uses.
import json

from fst.config import ConfigError, problems_per_round, validate_config


def _config_source():
    files = workflow.configfiles
    return ", ".join(str(f) for f in files) if files else "config"


try:
    _resolved = validate_config(
        config, workflow.source_path("../schemas/config.schema.yaml"), source=_config_source()
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(_resolved)

EXPERIMENT = config["experiment"]
RESULTS = "results"
EXP_DIR = f"{RESULTS}/{EXPERIMENT}"
RUN = f"{EXP_DIR}/{{point}}/{{arm}}/seed{{seed}}"
ROUND = f"{RUN}/round{{round}}"
AFTER = f"{RUN}/eval/after{{k}}"
POINTS = ["default"]
TRAIN_TASK = "user" if config["tasks"]["data_file"] else config["tasks"]["train"]
ENV = "../../envs/cpu.yaml"
GPU_ENV = "../../envs/gpu.yaml"  # the rules that ask for a GPU in profiles/default/


wildcard_constraints:
    point=r"[A-Za-z0-9_.~=-]+",
    arm="|".join(config["arms"]),
    seed=r"\d+",
    round=r"\d+",
    k=r"\d+",
    task=r"[a-z_]+",


def results_root(path):
    """The results folder above a file of the results tree (where the SQLite tracking db lives)."""
    return path.split(f"/{EXPERIMENT}/")[0]


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def data_path(task):
    return f"{EXP_DIR}/data/{task}.parquet"


def round_dir(round_index):
    return ROUND.replace("{round}", str(round_index))


def after_dir(k):
    return AFTER.replace("{k}", str(k))


def trains_weights(arm):
    return arm != "gepa"


def gepa_round(arm, round_index):
    """Whether round `round_index` of `arm` runs GEPA (else its fast stage passes Φ through)."""
    return arm == "gepa" or (arm == "fst" and int(round_index) % config["fast"]["every"] == 0)


def policy_before(arm, round_index):
    """θ_c: the base model before round 0 (always, for arm gepa), else the previous slow output."""
    round_index = int(round_index)
    if round_index == 0 or not trains_weights(arm):
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
    """Provenance of every stage that generated policy rollouts before evaluation point k."""
    stages = ["fast", "rollout"] if trains_weights(arm) else ["fast"]
    return [f"{round_dir(r)}/provenance/{stage}.json" for r in range(int(k)) for stage in stages]


def round_provenance_before(wildcards):
    return round_provenance(wildcards.arm, wildcards.k)


def all_round_provenance():
    """The fast and rollout provenance of every round of every run (for the summary's x-axes)."""
    return [
        path
        for point in POINTS
        for arm in config["arms"]
        for seed in config["seeds"]
        for path in expand(round_provenance(arm, config["rounds"]), point=point, arm=arm, seed=seed)
    ]


def previous_tracked(wildcards):
    """Mirror points of one run in order: MLflow calls for one run key must not overlap."""
    k = int(wildcards.k)
    return [f"{after_dir(k - 1)}/tracked.json"] if k else []


def fast_settings(wildcards):
    return {
        "gepa_round": gepa_round(wildcards.arm, wildcards.round),
        "fast": config["fast"],
        "reflection": config["reflection"],
        "sampling": {k: config["rollout"][k] for k in ("max_new_tokens", "temperature", "top_p", "batch_size")},
        "dtype": config["model"]["dtype"],
    }


def sampling_settings():
    rollout = config["rollout"]
    return {
        key: rollout[key] for key in ("max_new_tokens", "temperature", "top_p", "batch_size")
    } | {"dtype": config["model"]["dtype"]}


def rollout_settings():
    return sampling_settings() | {
        "group_size": config["rollout"]["group_size"],
        "problems": problems_per_round(config),
    }


def slow_settings(wildcards):
    return config["slow"] | {
        "group_size": config["rollout"]["group_size"],
        "max_completion_length": config["rollout"]["max_new_tokens"],
        "temperature": config["rollout"]["temperature"],
        "dtype": config["model"]["dtype"],
        "seed": int(wildcards.seed),
    }


def final_outputs():
    tracked = expand(
        f"{AFTER}/tracked.json",
        point=POINTS,
        arm=config["arms"],
        seed=config["seeds"],
        k=range(config["rounds"] + 1),
    )
    return tracked + [f"{EXP_DIR}/summary.parquet", f"{EXP_DIR}/reward_curve.png"]
