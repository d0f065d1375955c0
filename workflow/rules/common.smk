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
RUN = EXP_DIR + "/{point}/{arm}/seed{seed}"
ROUND = RUN + "/round{round}"
AFTER = RUN + "/eval/after{k}"
POINTS = ["default"]
TRAIN_TASK = "user" if config["tasks"]["data_file"] else config["tasks"]["train"]
ENV = "../../envs/cpu.yaml"


wildcard_constraints:
    point=r"[A-Za-z0-9_.~=-]+",
    arm="|".join(config["arms"]),
    seed=r"\d+",
    round=r"\d+",
    k=r"\d+",
    task=r"[a-z_]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def data_path(task):
    return f"{EXP_DIR}/data/{task}.parquet"


def policy_before(round_index):
    """θ_c: the base model before round 0, else the previous round's slow output."""
    round_index = int(round_index)
    if round_index == 0:
        return f"{EXP_DIR}/base_model"
    return ROUND.replace("{round}", str(round_index - 1)) + "/policy"


def population_before(round_index):
    """Φ_c: the seed population before round 0, else the previous round's fast output."""
    round_index = int(round_index)
    if round_index == 0:
        return EXP_DIR + "/{point}/population_seed.json"
    return ROUND.replace("{round}", str(round_index - 1)) + "/population.json"


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
        AFTER + "/tracked.json",
        point=POINTS,
        arm=config["arms"],
        seed=config["seeds"],
        k=range(config["rounds"] + 1),
    )
    return tracked + [f"{EXP_DIR}/summary.parquet", f"{EXP_DIR}/reward_curve.png"]
