"""Before any job: what a config will cost (`fst plan`)."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_plan(args) -> None:
    """Plan of a config before it runs: jobs, policy rollouts, reflection calls, tokens, device-hours."""
    from fst.config import ConfigError
    from fst.plan import make_plan
    from fst.plan.render import render

    try:
        plan = make_plan([Path(f) for f in args.configfile], args.config, device=args.device)
    except ConfigError as error:
        raise SystemExit(f"fst plan: {error}") from None
    if args.json:
        text = json.dumps(plan, indent=2) + "\n"
        if args.json == "-":
            print(text, end="")
            return
        Path(args.json).write_text(text)
    print(render(plan), end="")
