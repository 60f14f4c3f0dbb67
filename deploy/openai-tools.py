"""Drives a netfly gateway's /v1 with the official `openai` Python client
through a streamed tool call and a streamed answer with reasoning and
logprobs (the Rust test in tests/suite/openai_api.rs scripts the upstream
and checks what this prints).

    python deploy/openai-tools.py BASE_URL
"""

import json
import sys

import openai


def main() -> None:
    client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=20)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    out = {}

    calls, finish, usage, model = {}, None, None, None
    for chunk in client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools, stream=True, stream_options={"include_usage": True},
    ):
        model = chunk.model
        if chunk.usage:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    call = calls.get(0, {})
    out["tool"] = {**call, "finish_reason": finish, "usage": usage, "model": model}

    reasoning, content, tokens = "", "", []
    for chunk in client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Hi"}], stream=True, logprobs=True,
    ):
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            content += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens += [t.token for t in choice.logprobs.content]
    out["reasoning"] = {"reasoning": reasoning, "content": content, "logprob_tokens": tokens}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
