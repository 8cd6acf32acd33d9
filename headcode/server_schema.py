"""Request bodies of the OpenAI-compatible endpoints (pydantic), and their checks.

Fields the OpenAI API has and headcode does not serve (``n > 1``, ``logprobs``, ``echo``,
``suffix``, tools, penalties) are refused with a 400 saying so rather than silently ignored;
unknown extra fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from headcode.runtime.serving.requests import RequestError


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    stream_options: dict[str, Any] | None = None
    logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def stops(self) -> tuple[str, ...]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(s) > 4:
            raise RequestError("stop: at most 4 stop strings")
        return tuple(x for x in s if x)

    def unsupported(self) -> list[str]:
        bad = []
        if self.n != 1:
            bad.append("n must be 1")
        if self.logprobs not in (None, False, 0):
            bad.append("logprobs are not returned")
        if self.presence_penalty or self.frequency_penalty:
            bad.append("presence/frequency penalties are not applied")
        return bad

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise RequestError("prompt: give a string (or a non-empty list of strings)")
        return prompts

    def check(self) -> None:
        bad = self.unsupported()
        if self.echo:
            bad.append("echo is not supported")
        if self.suffix:
            bad.append("suffix (insertion) is not supported")
        if self.best_of not in (None, 1):
            bad.append("best_of must be 1")
        if self.stream and not isinstance(self.prompt, str):
            bad.append("streaming serves one prompt per request: send a string")
        if bad:
            raise RequestError("; ".join(bad))


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None

    def check(self) -> None:
        bad = self.unsupported()
        if self.tools:
            bad.append("tools are not supported")
        if bad:
            raise RequestError("; ".join(bad))

    def conversation(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them (``developer`` is the newer name of ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]
