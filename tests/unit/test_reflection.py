"""The reflection LM backends, GEPA's proposal extraction, and the config factory.

The OpenAI-compatible backend talks to a real HTTP server on 127.0.0.1 (stdlib http.server in a
thread) through the real openai client; the local backend runs the tiny random Llama.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from loopback import REPLY, Endpoint

from fst.config import default_config
from fst.reflection import (
    LocalReflectionLM,
    OpenAICompatibleLM,
    ReflectionError,
    describe,
    extract_prompt,
    make_reflection_lm,
)

KEY_ENV = "FST_TEST_REFLECTION_KEY"
KEY = "sk-test-7f3a9c1e5b2d4a68SECRET"


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _openai(endpoint, **kw) -> OpenAICompatibleLM:
    kw = {"api_key_env": KEY_ENV, "max_tokens": 64, "temperature": 1.0, "timeout_s": 5} | kw
    return OpenAICompatibleLM(endpoint.base_url, "reflector-7b", **kw)


def _no_key_anywhere(lm, caplog, *extra: str) -> None:
    for text in (repr(lm), json.dumps(describe(lm)), json.dumps(lm.usage.as_dict()), caplog.text, *extra):
        assert KEY not in text


def test_openai_returns_content_counts_usage_and_sends_the_key(endpoint, keyed, caplog):
    caplog.set_level(logging.DEBUG)  # the openai/httpx debug logs too
    lm = _openai(endpoint, seed=5)
    assert lm("Rewrite this instruction.") == REPLY
    assert lm([{"role": "user", "content": "Again."}]) == REPLY  # GEPA's chat-messages form
    assert lm.usage.as_dict() | {"seconds": 0} == {
        "calls": 2,
        "failures": 0,
        "prompt_tokens": 22,
        "completion_tokens": 14,
        "seconds": 0,
        "calls_without_token_counts": 0,
    }
    assert (lm.total_tokens_in, lm.total_tokens_out, lm.total_cost) == (22, 14, 0.0)
    first, second = endpoint.requests
    assert first["headers"]["authorization"] == f"Bearer {KEY}"
    assert first["body"]["model"] == "reflector-7b"
    assert first["body"]["messages"] == [{"role": "user", "content": "Rewrite this instruction."}]
    # the configured budget reaches the request under the name OpenAI's reasoning models accept
    assert first["body"]["max_completion_tokens"] == 64 and "max_tokens" not in first["body"]
    assert (first["body"]["seed"], second["body"]["seed"]) == (6, 7)  # reproducible, distinct per call
    info = describe(lm)
    assert info["backend"] == "openai" and info["base_url"] == endpoint.base_url
    assert info["api_key_env"] == KEY_ENV and info["api_key_set"] is True
    json.dumps(info)
    _no_key_anywhere(lm, caplog)


def test_openai_without_usage_counts_zero_tokens_and_says_so(endpoint, keyed, caplog):
    endpoint.mode = "nousage"
    lm = _openai(endpoint)
    assert lm("x") == REPLY and lm("y") == REPLY
    assert (lm.usage.calls, lm.usage.prompt_tokens, lm.usage.calls_without_token_counts) == (2, 0, 2)
    assert caplog.text.count("returns no token usage") == 1


def test_openai_http_500_is_retried_a_bounded_number_of_times(endpoint, keyed, caplog):
    caplog.set_level(logging.DEBUG)
    endpoint.mode = "500"
    lm = _openai(endpoint, max_retries=2)
    started = time.perf_counter()
    with pytest.raises(ReflectionError) as err:
        lm("Rewrite this instruction.")
    assert time.perf_counter() - started < 5
    assert len(endpoint.requests) == 3  # one try + max_retries
    message = str(err.value)
    assert endpoint.base_url in message and "reflector-7b" in message and "500" in message
    assert f"${KEY_ENV}" in message and "reflection.base_url" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert (lm.usage.calls, lm.usage.failures) == (1, 1)
    _no_key_anywhere(lm, caplog, message, lm.last_error)


def test_a_server_that_echoes_the_key_does_not_leak_it(endpoint, keyed, caplog):
    caplog.set_level(logging.DEBUG)
    endpoint.mode = "echo_key"
    lm = _openai(endpoint, max_retries=0)
    with pytest.raises(ReflectionError) as err:
        lm("x")
    assert "401" in str(err.value) and "***" in str(err.value)
    _no_key_anywhere(lm, caplog, str(err.value), repr(err.value), lm.last_error)


@pytest.mark.parametrize("mode", ["badjson", "empty"])
def test_an_unusable_response_is_a_reflection_error(endpoint, keyed, mode):
    endpoint.mode = mode
    lm = _openai(endpoint, max_retries=0)
    with pytest.raises(ReflectionError, match="reflection endpoint .* failed"):
        lm("x")
    assert lm.usage.failures == 1


def test_a_closed_port_fails_quickly(keyed, caplog):
    gone = Endpoint()
    gone.close()
    lm = _openai(gone, max_retries=1)
    started = time.perf_counter()
    with pytest.raises(ReflectionError, match="Connection") as err:
        lm("x")
    assert time.perf_counter() - started < 5
    assert gone.base_url in str(err.value)
    _no_key_anywhere(lm, caplog, str(err.value))


def test_no_key_env_sends_a_placeholder_never_openai_api_key(endpoint, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-key-must-not-travel")
    lm = _openai(endpoint, api_key_env=None)
    assert lm("x") == REPLY
    auth = endpoint.requests[0]["headers"]["authorization"]
    assert "sk-ambient" not in auth and auth.startswith("Bearer ")
    assert describe(lm)["api_key_set"] is False


def test_gepa_reflects_through_the_endpoint(endpoint, keyed):
    """GEPA's own reflection path (prompt rendering, call, fence extraction) on this backend."""
    from gepa.proposer.reflective_mutation.reflection_lm import StatelessReflectionLM

    lm = _openai(endpoint)
    dataset = {"system_prompt": [{"Inputs": "What is 2 + 3?", "Feedback": "Wrong: expected 5"}]}
    proposal, _ = StatelessReflectionLM(lm).reflect({"system_prompt": "Be nice."}, dataset, ["system_prompt"])
    assert proposal.new_texts["system_prompt"] == extract_prompt(REPLY)
    sent = endpoint.requests[0]["body"]["messages"][0]["content"]
    assert "Be nice." in sent and "Wrong: expected 5" in sent
    assert hasattr(lm, "total_cost")  # so gepa.optimize does not wrap it in its estimating TrackingLM


def test_local_backend_loads_once_and_counts_tokens(tiny_model_dir, monkeypatch):
    import fst.policy
    from fst.generation import chat_prompt_ids

    loads = []
    real_load = fst.policy.load_policy
    monkeypatch.setattr(fst.policy, "load_policy", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    lm = LocalReflectionLM(tiny_model_dir, max_new_tokens=6, temperature=1.0, seed=3, dtype="float32")
    assert lm._model is None  # lazy
    first, second = lm("Write a better instruction."), lm("Write another.")
    assert isinstance(first, str) and isinstance(second, str)
    assert len(loads) == 1
    expected_prompt = sum(
        len(chat_prompt_ids(lm._tokenizer, lm.system_prompt, text))
        for text in ("Write a better instruction.", "Write another.")
    )
    assert lm.usage.prompt_tokens == expected_prompt
    assert 2 <= lm.usage.completion_tokens <= 12
    assert (lm.usage.calls, lm.usage.failures) == (2, 0) and lm.usage.seconds > 0
    assert describe(lm)["backend"] == "local" and json.dumps(describe(lm))
    # An over-long request is cut to the model's context (512 positions) instead of failing.
    lm("long context " * 400)
    assert lm.usage.prompt_tokens - expected_prompt + 6 <= 512


def test_local_backend_given_the_stages_base_model_loads_nothing_and_reflects_the_same(tiny_model_dir,
                                                                                       monkeypatch):
    """Arm gepa's fast stage has the base model loaded as its policy: the reflection LM uses that copy
    (one load per job) and proposes exactly what a reflection LM with its own copy would."""
    import fst.policy

    own = LocalReflectionLM(tiny_model_dir, max_new_tokens=6, temperature=1.0, seed=3, dtype="float32")
    expected = [own("Write a better instruction."), own("Write another.")]
    model, _ = fst.policy.load_policy(tiny_model_dir)
    monkeypatch.setattr(fst.policy, "load_policy", lambda *a, **k: pytest.fail("loaded the model again"))
    shared = make_reflection_lm(default_config()["reflection"] | {"max_tokens": 6}, tiny_model_dir, 3,
                                "float32", base_model=model)
    assert [shared("Write a better instruction."), shared("Write another.")] == expected


def test_local_backend_missing_folder_is_a_reflection_error(tmp_path):
    lm = LocalReflectionLM(tmp_path / "nowhere", max_new_tokens=6, temperature=1.0, seed=0, dtype="float32")
    with pytest.raises(ReflectionError, match="local reflection model"):
        lm("x")
    assert lm.usage.failures == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (REPLY, "Add the two numbers and end with the final number."),
        ("```text\nSolve step by step.\n```", "Solve step by step."),
        (
            "Intro\n```\nFirst block text\n```\nmiddle\n```\nlast\n```",
            "First block text\n```\nmiddle\n```\nlast",
        ),
        # A single fence only counts at the very start or end; elsewhere the whole reply is the prompt.
        ("```\nAlways give only the number.", "Always give only the number."),  # never closed
        ("Sure!\n```\nAlways give only the number.", "Sure!\n```\nAlways give only the number."),
        ("```You are a calculator that adds.", "are a calculator that adds."),  # 1st word taken as a tag
        ("Always give only the number.\n```", "Always give only the number."),  # closing fence only
        ("  You are a calculator. Reply with the number.  ", "You are a calculator. Reply with the number."),
        ("", None),
        ("   \n\t ", None),
        (None, None),
        ("```\n```", None),
        ("``` ok ```", None),
        ("```\n!!\n```", None),
        ("```python\n", None),
    ],
)
def test_extract_prompt_follows_gepa(reply, expected):
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    assert extract_prompt(reply) == expected
    if expected is not None:
        assert expected == InstructionProposalSignature.output_extractor(reply.strip())["new_instruction"]


def test_make_reflection_lm_takes_every_setting_from_the_validated_config(tmp_path):
    defaults = default_config()["reflection"]
    local = make_reflection_lm(
        defaults | {"max_tokens": 64, "temperature": 0.5}, tmp_path, seed=2, dtype="bfloat16"
    )
    assert isinstance(local, LocalReflectionLM)
    assert (local.model_dir, local.max_new_tokens, local.temperature, local.seed, local.dtype) == (
        tmp_path, 64, 0.5, 2, "bfloat16")
    remote = make_reflection_lm(
        defaults | {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 3},
        tmp_path, seed=0, dtype="float32",
    )
    assert isinstance(remote, OpenAICompatibleLM)
    assert (remote.api_key_env, remote.timeout_s, remote.max_tokens) == (
        defaults["api_key_env"], 3.0, defaults["max_tokens"])
    openai = defaults | {"backend": "openai"}
    keyless = openai | {"base_url": "u", "model": "m", "api_key_env": None}
    no_auth = make_reflection_lm(keyless, tmp_path, 0, "float32")
    assert no_auth.api_key_env is None
    with pytest.raises(ValueError, match=r"reflection\.base_url"):
        make_reflection_lm(openai | {"model": "m"}, tmp_path, 0, "float32")
    with pytest.raises(ValueError, match=r"reflection\.model"):
        make_reflection_lm(openai | {"base_url": "http://x/v1", "model": None}, tmp_path, 0, "float32")
    with pytest.raises(ValueError, match="local' or 'openai"):
        make_reflection_lm(defaults | {"backend": "bedrock"}, tmp_path, 0, "float32")


def test_credentials_in_the_url_are_not_described(monkeypatch):
    lm = OpenAICompatibleLM("https://user:hunter22@example.invalid/v1?token=abc", "m", api_key_env=None,
                            max_tokens=8, temperature=1.0, timeout_s=1)
    assert "hunter22" not in repr(lm) and "hunter22" not in json.dumps(describe(lm))
    assert "token=abc" not in json.dumps(describe(lm))
