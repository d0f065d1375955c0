"""The workflow's stages, one function per `fst <stage>` subcommand, grouped by stage family.

Each stage function takes the parsed arguments (`fst.cli` maps a subcommand's arguments to its
function), reads its inputs, writes its outputs atomically and a provenance record beside them.
Heavy imports (torch, transformers, TRL, vLLM) happen inside the stage functions and are timed there.
Stages log under the "fst" logger.
"""
