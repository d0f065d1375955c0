"""The reflection LM: the frozen model GEPA asks to rewrite a fast-weight prompt from traces and feedback.

GEPA 0.1.4 calls its reflection LM as a plain callable (`gepa.proposer.reflective_mutation.base
.LanguageModel`: `lm(prompt) -> str`, where `prompt` is the rendered instruction-proposal text, or a
list of chat messages when the reflective dataset carries images). Two backends implement it:

- `LocalReflectionLM`: the frozen base model (a local Hugging Face folder) through transformers, with
  the same chat template and sampler as rollouts (`fst.generation`). On CPU with a ~100M model this is
  close to a random search over prompt text (docs: smollm2-baseline notes): it proves the machinery.
- `OpenAICompatibleLM`: any OpenAI-compatible chat-completions endpoint (a vLLM server, a hosted API).
  The API key is read from an environment variable named in the config and never written anywhere:
  not in messages, logs, repr(), provenance (`describe`) or returned values.

Both expose `total_cost` / `total_tokens_in` / `total_tokens_out`, so `gepa.optimize` uses them as
they are instead of wrapping them in its `TrackingLM` (which estimates tokens from characters): the
token counts GEPA and our provenance see are the exact ones in `usage`.

`blind_request` is the request of the feedback-blind control (fast.proposer blind): the current prompt
and the task's description, no rollout and no feedback.

`extract_prompt` turns a reply into the new prompt with GEPA's own extractor and returns None for a
reply that yields no usable prompt (the fast stage counts it as a rejected proposal).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

# Sent as the system message to the local model: SmolLM2's chat template injects its own default
# system prompt when none is given, so the reflection request always carries an explicit one.
DEFAULT_LOCAL_SYSTEM_PROMPT = (
    "You improve instructions for an AI assistant. Reply with the new instruction inside a ``` block."
)
# Servers without authentication still need some bearer token in the openai client.
NO_KEY_PLACEHOLDER = "no-key"
# A proposal with fewer non-space characters than this is no prompt at all (junk, a lone word).
MIN_PROMPT_CHARS = 8
_REDACTED = "***"


@dataclass
class ReflectionUsage:
    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    # Calls whose response carried no token usage (counted as 0 tokens): the totals are a lower bound.
    calls_without_token_counts: int = 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


class ReflectionError(RuntimeError):
    """The reflection backend failed; the message says which endpoint and what to check (never the key)."""


# --------------------------------------------------------------------------------------------------
# Helpers


def _prompt_parts(prompt: str | list[dict[str, Any]]) -> tuple[str | None, str]:
    """(system text or None, user text) of a GEPA prompt: a string, or chat messages (text parts only)."""
    if isinstance(prompt, str):
        return None, prompt
    system: str | None = None
    texts: list[str] = []
    dropped = 0
    for message in prompt:
        content = message.get("content", "")
        if isinstance(content, str):
            parts = [content]
        else:
            parts = [p.get("text", "") for p in content if p.get("type") == "text"]
            dropped += sum(1 for p in content if p.get("type") != "text")
        if message.get("role") == "system":
            system = "\n\n".join(parts)
        else:
            texts.extend(parts)
    if dropped:
        log.warning("reflection prompt: %d non-text parts (images) dropped for a text-only model", dropped)
    return system, "\n\n".join(texts)


def _safe_url(url: str) -> str:
    """The URL without credentials (user:password@) or a query string, for messages and provenance."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _CountedLM:
    """What GEPA reads from a reflection LM (it then skips its character-count TrackingLM wrapper)."""

    total_cost = 0.0  # unknown pricing: GEPA's max_reflection_cost never triggers on these backends
    usage: ReflectionUsage

    @property
    def total_tokens_in(self) -> int:
        return self.usage.prompt_tokens

    @property
    def total_tokens_out(self) -> int:
        return self.usage.completion_tokens


# --------------------------------------------------------------------------------------------------
# Local backend


class LocalReflectionLM(_CountedLM):
    """The frozen base model as the reflection LM (transformers, on the fast stage's device)."""

    backend = "local"

    def __init__(
        self,
        model_dir: Path,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        dtype: str,
        device: str = "cpu",
        system_prompt: str = DEFAULT_LOCAL_SYSTEM_PROMPT,
        model=None,
    ):
        self.model_dir = Path(model_dir)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.dtype = dtype
        self.device = device
        self.system_prompt = system_prompt
        self.usage = ReflectionUsage()
        self.last_error: str | None = None
        self._model = model  # the stage's own copy of these weights, when it has one (loaded once per job)
        self._tokenizer = None

    def __repr__(self) -> str:
        return (
            f"LocalReflectionLM(model_dir={str(self.model_dir)!r}, max_new_tokens={self.max_new_tokens}, "
            f"temperature={self.temperature}, seed={self.seed}, dtype={self.dtype!r})"
        )

    def _load(self) -> None:
        from fst.policy import load_policy, load_tokenizer

        started = time.perf_counter()
        if self._model is None:
            model, tokenizer = load_policy(self.model_dir, self.dtype, self.device)
        else:
            model, tokenizer = self._model, load_tokenizer(self.model_dir)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._model, self._tokenizer = model, tokenizer
        elapsed = time.perf_counter() - started
        self.usage.seconds += elapsed
        log.info("reflection model loaded from %s in %.1f s", self.model_dir, elapsed)

    def _prompt_ids(self, system: str, user: str) -> list[int]:
        """Chat-templated prompt ids; the middle of an over-long user text is cut to fit the context."""
        from fst.generation import chat_prompt_ids

        ids = chat_prompt_ids(self._tokenizer, system, user)
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if not limit or len(ids) + self.max_new_tokens <= limit:
            return ids
        user_ids = self._tokenizer(user, add_special_tokens=False)["input_ids"]
        keep = max(len(user_ids) - (len(ids) + self.max_new_tokens - limit) - 16, 2)
        head, tail = user_ids[: keep // 2], user_ids[len(user_ids) - (keep - keep // 2) :]
        cut = self._tokenizer.decode(head) + "\n[...]\n" + self._tokenizer.decode(tail)
        log.warning(
            "reflection prompt of %d tokens + %d new exceeds the model's %d positions: middle cut",
            len(ids),
            self.max_new_tokens,
            limit,
        )
        return chat_prompt_ids(self._tokenizer, system, cut)

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        from fst.generation import SamplingSettings, sample

        self.usage.calls += 1
        try:
            if self._tokenizer is None:
                self._load()
            started = time.perf_counter()
            system, user = _prompt_parts(prompt)
            ids = self._prompt_ids(self.system_prompt if system is None else system, user)
            settings = SamplingSettings(
                max_new_tokens=self.max_new_tokens, temperature=self.temperature, batch_size=1
            )
            # A different but reproducible seed per call: the same request twice gives two proposals.
            (completion,) = sample(
                self._model, self._tokenizer, [ids], settings, self.seed + self.usage.calls
            )
        except Exception as err:
            self.usage.failures += 1
            self.last_error = f"{type(err).__name__}: {_short(err)}"
            raise ReflectionError(
                f"local reflection model {self.model_dir} failed: {self.last_error}; check that the folder "
                "is a complete Hugging Face model (config, weights, tokenizer) and fits in memory"
            ) from err
        self.usage.prompt_tokens += len(ids)
        self.usage.completion_tokens += len(completion.ids)
        self.usage.seconds += time.perf_counter() - started
        log.info(
            "reflection call %d: %d prompt + %d completion tokens (%s)",
            self.usage.calls,
            len(ids),
            len(completion.ids),
            completion.finish_reason,
        )
        return completion.text


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible backend


class OpenAICompatibleLM(_CountedLM):
    """An OpenAI-compatible chat-completions endpoint as the reflection LM.

    The key is read from `$api_key_env` when the client is built (first call) and lives only inside
    the openai client; every message this class produces is passed through `_redact`.
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None,
        max_tokens: int,
        temperature: float,
        timeout_s: float,
        max_retries: int = 2,
        seed: int | None = None,
        system_prompt: str | None = None,
    ):
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.seed = seed
        self.system_prompt = system_prompt  # None: GEPA's prompt as the only (user) message
        self.usage = ReflectionUsage()
        self.last_error: str | None = None
        self._client = None
        self._secrets: tuple[str, ...] = ()
        self._warned_no_usage = False

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleLM(base_url={_safe_url(self.base_url)!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_tokens={self.max_tokens}, "
            f"temperature={self.temperature}, timeout_s={self.timeout_s}, max_retries={self.max_retries})"
        )

    def _where(self) -> str:
        return f"reflection endpoint {_safe_url(self.base_url)} (model {self.model})"

    def _key_hint(self) -> str:
        return (
            f"the key in ${self.api_key_env}"
            if self.api_key_env
            else "reflection.api_key_env (unset: no key sent)"
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, _REDACTED)
        return text

    def _get_client(self):
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            if self.api_key_env and not key:
                log.warning("%s: $%s is not set; sending no key", self._where(), self.api_key_env)
            # Always pass a key explicitly: given None, the client would fall back to $OPENAI_API_KEY
            # and send that key to whatever server base_url names.
            key = key or NO_KEY_PLACEHOLDER
            if key != NO_KEY_PLACEHOLDER:
                self._secrets = (key,)
            # Credentials embedded in the URL are secrets too (the client needs the URL as given).
            userinfo = urlsplit(self.base_url).netloc.rpartition("@")[0]
            self._secrets += tuple(s for s in (userinfo, *userinfo.split(":")) if len(s) >= 4)
            self._client = OpenAI(
                base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=self.max_retries
            )
        return self._client

    def _fail(self, reason: str) -> ReflectionError:
        self.usage.failures += 1
        self.last_error = self._redact(_short(reason))
        message = self._redact(
            f"{self._where()} failed: {self.last_error}; check reflection.base_url / that the server is up / "
            f"{self._key_hint()}"
        )
        log.error("%s", message)
        return ReflectionError(message)

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        self.usage.calls += 1
        started = time.perf_counter()
        if isinstance(prompt, str):
            messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        else:
            messages = list(prompt)
        if self.system_prompt is not None and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        extra = {} if self.seed is None else {"seed": self.seed + self.usage.calls}
        try:
            response = self._get_client().chat.completions.create(
                model=self.model,
                messages=messages,
                # OpenAI's reasoning models (GPT-5) refuse max_tokens; vLLM's server takes either name
                max_completion_tokens=self.max_tokens,
                temperature=self.temperature,
                **extra,
            )
        except Exception as err:  # connection, HTTP status, timeout, undecodable body
            status = getattr(err, "status_code", None)
            reason = f"{type(err).__name__}" + (f" (HTTP {status})" if status else "") + f": {err}"
            # `from None`: the client's exception (and its request/response) may carry the key.
            raise self._fail(reason) from None
        finally:
            self.usage.seconds += time.perf_counter() - started

        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise self._fail(f"the response has no choices ({_short(repr(response), 160)})")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            finish = getattr(choices[0], "finish_reason", None)
            raise self._fail(f"the first choice has no text content (finish_reason {finish})")

        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens
        else:
            self.usage.calls_without_token_counts += 1
            if not self._warned_no_usage:
                self._warned_no_usage = True
                log.warning("%s returns no token usage: its calls count 0 tokens", self._where())
        log.info(
            "reflection call %d: %s prompt + %s completion tokens in %.1f s",
            self.usage.calls,
            prompt_tokens,
            completion_tokens,
            time.perf_counter() - started,
        )
        return content


# --------------------------------------------------------------------------------------------------
# Construction, provenance, proposal parsing


def make_reflection_lm(cfg: dict, base_model_dir: Path, seed: int, dtype: str, device: str = "cpu",
                       base_model=None):
    """The reflection LM the config's validated `reflection` section names (every key present).

    `local` is the frozen base model (in the policy's dtype; `base_model` when the stage has it loaded
    already); `openai` any OpenAI-compatible endpoint.
    """
    backend = cfg["backend"]
    if backend == "local":
        return LocalReflectionLM(Path(base_model_dir), max_new_tokens=cfg["max_tokens"],
                                 temperature=cfg["temperature"], seed=seed, dtype=dtype, device=device,
                                 model=base_model)
    if backend == "openai":
        for key, example in (
            ("base_url", "the server's OpenAI-compatible URL, e.g. http://localhost:8000/v1 (vLLM)"),
            ("model", "the model name the server serves, e.g. the path or name given to `vllm serve`"),
        ):
            if not cfg[key]:
                raise ValueError(
                    f"reflection.backend is 'openai' but reflection.{key} is not set: set reflection.{key} "
                    f"to {example} (or use reflection.backend: local)"
                )
        return OpenAICompatibleLM(cfg["base_url"], cfg["model"], api_key_env=cfg["api_key_env"],
                                  max_tokens=cfg["max_tokens"], temperature=cfg["temperature"],
                                  timeout_s=cfg["timeout_s"], seed=seed)
    raise ValueError(f"reflection.backend must be 'local' or 'openai', not {backend!r}")


def describe(lm) -> dict:
    """JSON-safe description for provenance: backend, model, endpoint (no key), settings, usage."""
    if isinstance(lm, LocalReflectionLM):
        return {
            "backend": "local",
            "model": str(lm.model_dir),
            "base_url": None,
            "settings": {
                "max_new_tokens": lm.max_new_tokens,
                "temperature": lm.temperature,
                "seed": lm.seed,
                "dtype": lm.dtype,
                "device": lm.device,
                "system_prompt": lm.system_prompt,
            },
            "usage": lm.usage.as_dict(),
        }
    if isinstance(lm, OpenAICompatibleLM):
        return {
            "backend": "openai",
            "model": lm.model,
            "base_url": _safe_url(lm.base_url),
            "api_key_env": lm.api_key_env,
            "api_key_set": bool(lm.api_key_env and os.environ.get(lm.api_key_env)),
            "settings": {
                "max_tokens": lm.max_tokens,
                "temperature": lm.temperature,
                "timeout_s": lm.timeout_s,
                "max_retries": lm.max_retries,
                "seed": lm.seed,
                "system_prompt": lm.system_prompt,
            },
            "usage": lm.usage.as_dict(),
        }
    return {"backend": "custom", "model": type(lm).__name__, "base_url": None, "settings": {}}


# The request of a blind proposal (fast.proposer blind): GEPA's own instruction-proposal template
# (gepa.strategies.instruction_proposal.InstructionProposalSignature.default_prompt_template) with the
# rollouts and their feedback taken out and the task's description put in their place. The reply is
# read as GEPA reads a reflective one: the text of its ``` block.
BLIND_PROMPT_TEMPLATE = """I provided an assistant with the following instructions to perform a task for me:
```
<curr_param>
```

The task is described as follows:
```
<task_description>
```

Your task is to write a new instruction for the assistant.

Read the task description carefully, identify the input format and infer a detailed description of the \
task I wish to solve with the assistant. If a generalizable strategy would help the assistant solve the \
task, include it in the instruction as well.

Provide the new instructions within ``` blocks."""


def blind_request(current: str, task_description: str) -> str:
    """The reflection request of a blind proposal: the current prompt and the task's description only."""
    request = BLIND_PROMPT_TEMPLATE.replace("<task_description>", task_description)
    return request.replace("<curr_param>", current)  # last: the prompt's own text is left as it is


def extract_prompt(reply: str | None) -> str | None:
    """The new prompt in a reflection reply, exactly as GEPA takes it; None if there is no usable prompt.

    GEPA's rule (`InstructionProposalSignature.output_extractor`): the text between the first and the
    last ``` (a first line without spaces is dropped as a language tag); with a single fence, the text
    after an opening one or before a closing one; with no fence, the whole stripped reply.
    """
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    if reply is None or not reply.strip():
        return None
    text = InstructionProposalSignature.output_extractor(reply.strip())["new_instruction"]
    if len("".join(text.split())) < MIN_PROMPT_CHARS:
        return None
    return text
