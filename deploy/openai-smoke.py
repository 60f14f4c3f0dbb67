"""Drives a netfly gateway with the official `openai` Python client.

    python deploy/openai-smoke.py BASE_URL API_KEY MESSAGE [MODEL]

BASE_URL is the gateway's `/v1` (e.g. http://127.0.0.1:8080/v1). Runs the
models list, one streamed chat (with usage), one whole chat, one chat with
an unknown model and one with a wrong key, and prints what it saw as one
JSON object on stdout (the Rust test in tests/suite/openai_api.rs checks
it). Exits non-zero only when the client itself fails unexpectedly.
"""

import json
import sys

import openai


def main() -> None:
    base, key, message = sys.argv[1], sys.argv[2], sys.argv[3]
    model = sys.argv[4] if len(sys.argv) > 4 else "gpt-4"
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": message}]
    out = {"openai_version": openai.__version__}

    out["models"] = [m.id for m in client.models.list()]

    parts, finish, usage, ids, chunks = [], None, None, set(), 0
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        ids.add(chunk.id)
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    out["stream"] = {
        "parts": parts,
        "finish_reason": finish,
        "usage": usage,
        "ids": len(ids),
        "chunks": chunks,
    }

    whole = client.chat.completions.create(model=model, messages=messages)
    out["whole"] = {
        "object": whole.object,
        "content": whole.choices[0].message.content,
        "role": whole.choices[0].message.role,
        "finish_reason": whole.choices[0].finish_reason,
        "usage": whole.usage.model_dump() if whole.usage else None,
    }

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        out["unknown_model"] = None
    except openai.BadRequestError as e:
        out["unknown_model"] = {"status": e.status_code, "code": e.code}

    bad = openai.OpenAI(base_url=base, api_key=key + "-wrong", max_retries=0, timeout=20)
    try:
        bad.chat.completions.create(model=model, messages=messages)
        out["wrong_key"] = None
    except openai.AuthenticationError as e:
        out["wrong_key"] = {"status": e.status_code, "code": e.code}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
