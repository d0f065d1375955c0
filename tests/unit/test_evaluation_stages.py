"""The evaluation stages through their CLI: one sampling seed per run, the held-out test split, MLflow."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from fst import artifacts, cli
from fst.data import build_task_data, load_split
from fst.evaluate import evaluation_seed, sample_and_score
from fst.generation import SamplingSettings, sample
from fst.population import Member, save_population, seed_population
from fst.stages import evaluation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN_SEED = 3
SETTINGS = {"max_new_tokens": 4, "temperature": 0.7, "batch_size": 8, "dtype": "auto", "device": "auto",
            "backend": "auto", "k": 2,
            "ood_problems": 0, "bootstrap_resamples": 200, "bootstrap_seed": 0}
SAMPLING = SamplingSettings(4, 0.7, 8)
EVOLVED = Member("m1", "Be brief and give the number.", "seed", 1.0, None, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    data = root / "arithmetic.parquet"
    artifacts.write_parquet(build_task_data("arithmetic", 0, {"train": 4, "val": 4, "test": 4}, None), data)
    save_population(seed_population("You are a careful math tutor."), root / "population_seed.json", 0)
    save_population([EVOLVED], root / "population_evolved.json", 1)
    return {"root": root, "data": data, "seed_population": root / "population_seed.json",
            "evolved": root / "population_evolved.json"}


def _evaluate(files, model_dir, after: int, out, base_dir=None, population="seed_population", cache=None):
    out.mkdir(parents=True, exist_ok=True)
    cli.main(["evaluate", "--policy", str(model_dir), "--population", str(files[population]),
              "--seed-population", str(files["seed_population"]), "--base-model", str(base_dir or model_dir),
              "--data", str(files["data"]), "--after-rounds", str(after), "--seed", str(RUN_SEED),
              "--settings", json.dumps(SETTINGS), "--out", str(out / "eval.parquet"),
              "--samples", str(out / "samples.parquet"), "--provenance", str(out / "provenance.json"),
              *(["--sample-cache", str(cache)] if cache else [])])
    return pd.read_parquet(out / "eval.parquet"), pd.read_parquet(out / "samples.parquet")


def _decompose(files, policy, base, out, cache=None):
    out.mkdir(parents=True, exist_ok=True)
    cli.main(["decompose", "--policy", str(policy), "--base-model", str(base),
              "--population", str(files["evolved"]), "--seed-population", str(files["seed_population"]),
              "--data", str(files["data"]), "--after-rounds", "2", "--seed", str(RUN_SEED),
              "--settings", json.dumps(SETTINGS), "--out", str(out / "decomposition.parquet"),
              "--samples", str(out / "samples.parquet"), "--provenance", str(out / "provenance.json"),
              *(["--sample-cache", str(cache)] if cache else [])])
    return pd.read_parquet(out / "decomposition.parquet"), pd.read_parquet(out / "samples.parquet")


def _shared(out) -> dict:
    return json.loads((out / "provenance.json").read_text())["shared"]


def test_a_shared_evaluation_equals_the_one_computed_afresh(files, tiny_model_dir, drifted_dir, tmp_path):
    """Draws shared through the sample cache give exactly the numbers and samples of a fresh evaluation;
    a repeat evaluation reuses every draw and KL and loads no model; the decomposition reuses the three
    cells the evaluations before and after training drew, and draws only base weights x evolved prompt."""
    cache = tmp_path / "shared"
    fresh = _evaluate(files, drifted_dir, 1, tmp_path / "fresh", tiny_model_dir, "evolved")
    first = _evaluate(files, drifted_dir, 1, tmp_path / "first", tiny_model_dir, "evolved", cache)
    again = _evaluate(files, drifted_dir, 1, tmp_path / "again", tiny_model_dir, "evolved", cache)
    for shared in (first, again):
        for ours, theirs in zip(shared, fresh, strict=True):
            pd.testing.assert_frame_equal(ours, theirs)
    computed = _shared(tmp_path / "first")["computed"]
    assert len(computed) == 4 and not _shared(tmp_path / "first")["reused"]  # 2 draws, 2 KL sums
    reused = _shared(tmp_path / "again")["reused"]
    assert [r["key"] for r in reused] == computed and not _shared(tmp_path / "again")["computed"]
    assert {r["computed_by"] for r in reused} == {str(tmp_path / "first" / "provenance.json")}
    timings = json.loads((tmp_path / "again" / "provenance.json").read_text())["timings_s"]
    assert "model_load" not in timings and "base_model_load" not in timings

    _evaluate(files, tiny_model_dir, 0, tmp_path / "before", cache=cache)
    decomposition = _decompose(files, drifted_dir, tiny_model_dir, tmp_path / "decompose", cache)
    for ours, theirs in zip(decomposition, _decompose(files, drifted_dir, tiny_model_dir, tmp_path / "alone"),
                            strict=True):
        pd.testing.assert_frame_equal(ours, theirs)
    assert len(_shared(tmp_path / "decompose")["reused"]) == 3
    assert len(_shared(tmp_path / "decompose")["computed"]) == 1


def test_the_same_weights_and_prompt_give_the_same_numbers_at_every_evaluation_point(files, tiny_model_dir):
    """Common random numbers: rounds 0 and 2 of a run with the same weights and prompt (arm gepa's
    unchanged population, or any arm's step 0) and the decomposition's base weights + seed prompt cell
    all sample the same completions, so they score the same."""
    root = files["root"]
    first, first_samples = _evaluate(files, tiny_model_dir, 0, root / "after0")
    later, later_samples = _evaluate(files, tiny_model_dir, 2, root / "after2")
    pd.testing.assert_frame_equal(first.drop(columns="after_rounds"), later.drop(columns="after_rounds"))
    assert list(first_samples["completion_text"]) == list(later_samples["completion_text"])
    mean = first[first["metric"] == "mean@2"].iloc[0]
    assert mean["ci95_low"] <= mean["value"] <= mean["ci95_high"]

    out = root / "decomposition"
    cli.main(["decompose", "--policy", str(tiny_model_dir), "--base-model", str(tiny_model_dir),
              "--population", str(files["evolved"]), "--seed-population", str(files["seed_population"]),
              "--data", str(files["data"]), "--after-rounds", "2", "--seed", str(RUN_SEED),
              "--settings", json.dumps(SETTINGS), "--out", str(out / "decomposition.parquet"),
              "--samples", str(out / "samples.parquet"), "--provenance", str(out / "provenance.json")])
    cells = pd.read_parquet(out / "decomposition.parquet").set_index(["weights", "prompt"])
    cell_samples = pd.read_parquet(out / "samples.parquet")
    base_seed = cell_samples[(cell_samples["weights"] == "base") & (cell_samples["prompt"] == "seed")]
    step0 = first_samples[first_samples["setting"] == "prompt:seed"]
    assert list(base_seed["completion_text"]) == list(step0["completion_text"])
    for column in ("value", "ci95_low", "ci95_high"):
        assert cells.loc[("base", "seed"), column] == mean[column]


def _validation(root, values: dict[int, float]):
    paths = []
    for after, value in values.items():
        path = root / f"val/after{after}/eval.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"after_rounds": [after], "task": ["arithmetic"], "setting": ["prompt:x"],
                      "metric": ["mean@2"], "value": [value], "n": [4]}).to_parquet(path)
        paths.append(str(path))
    return paths


def test_test_split_is_evaluated_at_the_final_and_the_selected_round(files, tiny_model_dir, tiny):
    root = files["root"]
    evals = _validation(root, {0: 0.25, 1: 0.5, 2: 0.375})  # validation selects round 1
    populations = [files["seed_population"], files["evolved"], files["seed_population"]]
    out = root / "test"
    cli.main(["evaluate-test", "--evals", *evals, "--policies", *[str(tiny_model_dir)] * 3,
              "--populations", *map(str, populations), "--data", str(files["data"]),
              "--seed", str(RUN_SEED), "--settings", json.dumps(SETTINGS),
              "--out", str(out / "test.parquet"), "--samples", str(out / "samples.parquet"),
              "--provenance", str(out / "provenance.json")])
    table = pd.read_parquet(out / "test.parquet").set_index("selection")
    assert list(table.columns[:2]) == ["after_rounds", "split"]
    assert table.loc["final", "after_rounds"] == 2 and table.loc["selected", "after_rounds"] == 1
    assert table.loc["final", "setting"] == "prompt:seed" and table.loc["selected", "setting"] == "prompt:m1"
    assert table.loc["selected", "val_value"] == 0.5
    assert set(table["split"]) == {"test"} and set(table["metric"]) == {"mean@2"}
    test = load_split(files["data"], "test")
    model, tokenizer = tiny
    seed = evaluation_seed(RUN_SEED)
    expected = sample_and_score(partial(sample, model), tokenizer, test, EVOLVED.text, 2, SAMPLING, seed, "")
    assert table.loc["selected", "value"] == pytest.approx(expected["reward"].mean())
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples["problem_id"]) == {p.id for p in test}  # the held-out problems, never val's
    selected = samples[samples["after_rounds"] == 1]
    assert list(selected["completion_text"]) == list(expected["completion_text"])
    assert json.loads((out / "provenance.json").read_text())["selected_after_rounds"] == 1


def test_track_mirrors_intervals_and_the_test_split(tmp_path, monkeypatch):
    import fst.tracking

    sent = {}
    def mirror(uri, **payload):
        sent.update(payload)
        return {"ok": True}

    monkeypatch.setattr(fst.tracking, "mirror_round", mirror)
    evaluation = tmp_path / "eval.parquet"
    pd.DataFrame({"after_rounds": [2, 2], "task": ["arithmetic"] * 2, "setting": ["prompt:m1", "prompt:seed"],
                  "metric": ["mean@2", "kl_to_base"], "value": [0.5, 0.01], "n": [4, 4],
                  "ci95_low": [0.25, math.nan], "ci95_high": [0.75, math.nan]}).to_parquet(evaluation)
    test = tmp_path / "test.parquet"
    pd.DataFrame({"selection": ["final", "selected"], "after_rounds": [2, 1], "split": ["test"] * 2,
                  "task": ["arithmetic"] * 2, "setting": ["prompt:m1"] * 2, "metric": ["mean@2"] * 2,
                  "value": [0.4, 0.6], "n": [4, 4], "ci95_low": [0.1, 0.3], "ci95_high": [0.7, 0.9],
                  "val_value": [0.5, 0.6]}).to_parquet(test)
    slow = tmp_path / "slow_metrics.json"  # the round's sums of the per-step group counts (fst.slow)
    artifacts.write_json({"groups/live_groups": 5, "groups/dropped_groups": 3, "skipped_step": 1,
                          "loss": 0.25, "steps": [{"step": 1}]}, slow)
    cli.main(["track", "--eval", str(evaluation), "--test", str(test), "--slow-metrics", str(slow),
              "--results-dir", str(tmp_path),
              "--experiment", "e", "--point", "default", "--arm", "fst", "--seed", "0", "--after-rounds", "2",
              "--params", json.dumps({"swept": {}, "config": {}}), "--uri", "sqlite:///unused.db",
              "--out", str(tmp_path / "tracked.json")])
    metrics = sent["metrics"]
    assert metrics["arithmetic/mean@2/ci95_low"] == 0.25
    assert "arithmetic/kl_to_base/ci95_low" not in metrics  # no interval, no metric
    assert metrics["test/selected/arithmetic/mean@2"] == 0.6
    assert metrics["test/final/arithmetic/mean@2/ci95_high"] == 0.7
    assert metrics["test/selected/after_rounds"] == 1.0
    assert metrics["train/groups/dropped_groups"] == 3.0 and metrics["train/skipped_step"] == 1.0
    assert metrics["train/groups/live_groups"] == 5.0 and "train/steps" not in metrics
    assert str(test) in sent["artifacts"]


@pytest.fixture
def vllm_backend(monkeypatch):
    """The evaluation stages with `rollout.backend` resolved to vLLM: the stand-in at vLLM's API edge
    (tests/vllm_stand_in.py), on the CPU (device resolution is the one thing replaced)."""
    from vllm_stand_in import LLM, install

    from fst import device

    install(monkeypatch)
    monkeypatch.setattr(device, "resolve", lambda *args, **kwargs: device.Runtime("cpu", "float32", "vllm"))
    engine = {"gpu_memory_utilization": 0.5, "max_model_len": None, "tensor_parallel_size": 1,
              "enforce_eager": True}
    return LLM, SETTINGS | {"backend": "vllm", "vllm": engine, "max_lora_rank": 8}


@pytest.fixture(scope="module")
def drifted_dir(tiny, tmp_path_factory):
    """A fully fine-tuned policy folder whose weights differ from the tiny base model's."""
    import copy

    import torch

    from fst.policy import save_policy

    model = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers.1." in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * param.std())
    out = tmp_path_factory.mktemp("drifted") / "policy"
    save_policy(model, out, Path(tiny[0].name_or_path))
    return out


def test_drifted_weights_give_the_same_numbers_kl_and_intervals_included_at_two_points(
    files, tiny_model_dir, drifted_dir, tmp_path
):
    """Common random numbers with trained weights: the KL path (seed-prompt context) is sampled and
    scored the same way at every evaluation point, so only weights and prompt can move the numbers."""
    first, _ = _evaluate(files, drifted_dir, 1, tmp_path / "a", tiny_model_dir, "evolved")
    later, _ = _evaluate(files, drifted_dir, 3, tmp_path / "b", tiny_model_dir, "evolved")
    pd.testing.assert_frame_equal(first.drop(columns="after_rounds"), later.drop(columns="after_rounds"))
    kl = first.set_index("metric").loc["kl_to_base"]
    assert 0 < kl["ci95_low"] < kl["value"] < kl["ci95_high"]


def test_evaluation_samples_with_vllm_and_scores_kl_after_the_engine_closed(
    files, tiny_model_dir, drifted_dir, vllm_backend, tmp_path, monkeypatch
):
    from vllm_stand_in import per_request_sample

    from fst.evaluate import token_kl
    from fst.generation import chat_prompt_ids
    from fst.policy import load_policy

    LLM, settings = vllm_backend
    load = evaluation.load_model

    def load_after_the_engine_closed(*args):  # the KL's transformers models: no engine beside them
        assert LLM.instances and all(engine.shut_down for engine in LLM.instances)
        return load(*args)

    monkeypatch.setattr(evaluation, "load_model", load_after_the_engine_closed)
    cli.main(["evaluate", "--policy", str(drifted_dir), "--population", str(files["evolved"]),
              "--seed-population", str(files["seed_population"]), "--base-model", str(tiny_model_dir),
              "--data", str(files["data"]), "--after-rounds", "1", "--seed", str(RUN_SEED),
              "--settings", json.dumps(settings), "--out", str(tmp_path / "eval.parquet"),
              "--samples", str(tmp_path / "samples.parquet"), "--provenance", str(tmp_path / "prov.json")])
    (engine,) = LLM.instances
    assert engine.kwargs["model"] == str(drifted_dir) and engine.shut_down
    table = pd.read_parquet(tmp_path / "eval.parquet").set_index("metric")
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    policy, tokenizer = load_policy(drifted_dir)
    base, _ = load_policy(tiny_model_dir)
    val = [p for p in load_split(files["data"], "val") for _ in range(2)]
    own = samples[samples["setting"] == "prompt:m1"]
    prompts = [chat_prompt_ids(tokenizer, EVOLVED.text, p.question) for p in val]
    drawn = per_request_sample(policy, tokenizer, prompts, SAMPLING, evaluation_seed(RUN_SEED))
    assert list(own["completion_ids"].map(list)) == [c.ids for c in drawn]  # one seed per request
    assert table.loc["mean@2", "value"] == pytest.approx(own["reward"].mean())
    context = samples[samples["setting"] == "kl_context:prompt:seed"]
    assert len(context) == len(val)
    assert table.loc["kl_to_base", "value"] == pytest.approx(token_kl(policy, base, context, 0.7), rel=1e-5)
    assert table.loc["kl_to_base", "value"] > 0
    runtime = json.loads((tmp_path / "prov.json").read_text())["runtime"]
    assert runtime["backend"] == "vllm" and runtime["engines"][str(drifted_dir)]["vllm"] == "0.31.0"


def test_decomposition_and_test_split_hold_one_vllm_engine_at_a_time(
    files, tiny_model_dir, drifted_dir, vllm_backend, tmp_path
):
    LLM, settings = vllm_backend
    cli.main(["decompose", "--policy", str(drifted_dir), "--base-model", str(tiny_model_dir),
              "--population", str(files["evolved"]), "--seed-population", str(files["seed_population"]),
              "--data", str(files["data"]), "--after-rounds", "2", "--seed", str(RUN_SEED),
              "--settings", json.dumps(settings), "--out", str(tmp_path / "decomposition.parquet"),
              "--samples", str(tmp_path / "samples.parquet"), "--provenance", str(tmp_path / "prov.json")])
    assert [e.kwargs["model"] for e in LLM.instances] == [str(tiny_model_dir), str(drifted_dir)]
    assert all(e.shut_down and not e.open_beside for e in LLM.instances)
    cells = pd.read_parquet(tmp_path / "decomposition.parquet")
    assert len(cells) == 4 and cells["value"].between(0, 1).all()

    LLM.instances = []
    evals = _validation(tmp_path, {0: 0.5, 1: 0.25})  # validation selects round 0, the final is 1
    cli.main(["evaluate-test", "--evals", *evals, "--policies", str(tiny_model_dir), str(drifted_dir),
              "--populations", str(files["seed_population"]), str(files["evolved"]),
              "--data", str(files["data"]), "--seed", str(RUN_SEED), "--settings", json.dumps(settings),
              "--out", str(tmp_path / "test.parquet"), "--samples", str(tmp_path / "test_samples.parquet"),
              "--provenance", str(tmp_path / "test.json")])
    assert sorted(e.kwargs["model"] for e in LLM.instances) == sorted([str(tiny_model_dir), str(drifted_dir)])
    assert all(e.shut_down and not e.open_beside for e in LLM.instances)
