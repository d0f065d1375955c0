# Fast-Slow Training experiments as file-based stages. Logic lives in src/fst; rules call `fst <stage>`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/round.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/plasticity.smk"
include: "workflow/rules/continual.smk"


onstart:
    check_devices_here()
    start_warm_runner()
    if warning := continual_seed_prompt_warning(config):
        print(f"fst-workflow: warning: {warning}")
    print(f"fst-workflow: experiment '{EXPERIMENT}', results in {EXP_DIR}/")


onsuccess:
    stop_warm_runner()


onerror:
    stop_warm_runner()
    print(f"fst-workflow failed: see the rule's log under {EXP_DIR}/ (finished stages are kept).")


rule all:
    default_target: True
    input:
        final_outputs(),
