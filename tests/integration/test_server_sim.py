"""serve-sim: a real server on 127.0.0.1 driven by a small aiohttp client; always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import numpy as np
import polars as pl
import pytest
from aiohttp import web

from burstgpt.workload.tokenizer import builtin_tokenizer
from burstgpt.server.app import FaultOptions, ServerOptions, SimServer
from burstgpt.sim.engine import EngineConfig
from burstgpt.sim.hardware import gpu_preset, model_preset
from burstgpt.sim.latency import LinearLatency, RooflineLatency
from burstgpt.sim.output_lengths import parse_output_length_model
from burstgpt.sim.simulate import EngineSetup, EngineSpec, build_engine_setup, simulate_workload
from burstgpt.workload.schema import conform_workload
from burstgpt.workload.tokenizer import count_tokens

MODEL = "sim-llama"


def _setup(latency=None, **config) -> EngineSetup:
    latency = latency or RooflineLatency(gpu_preset("H100-80GB"), model_preset("Llama-2-7B-chat"))
    base = {"num_gpu_blocks": 400, "max_model_len": 2048, "timeout_s": 30.0}
    return EngineSetup(EngineConfig(**{**base, **config}), latency, MODEL, "H100-80GB")


@contextlib.asynccontextmanager
async def running_server(options: ServerOptions):
    """Start the app on a free port of 127.0.0.1; yield (base URL, SimServer); always clean up."""
    server = SimServer(options)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        await runner.cleanup()


async def _stream(session, url, body) -> tuple[list[dict], bool]:
    """POST a streaming request; returns the parsed data events and whether [DONE] arrived."""
    events, done = [], False
    async with session.post(url, json=body) as response:
        assert response.status == 200
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
            else:
                events.append(json.loads(line[6:]))
    return events, done


def _prompt(tokens: int) -> str:
    return " ".join(["word"] * tokens)


def _unique_prompt(request: int, tokens: int) -> str:
    """`tokens` builtin tokens no other request's prompt starts with (serve-sim's prefix cache finds nothing)."""
    word = chr(97 + request % 26) + chr(97 + request // 26 % 26) + "q"
    return " ".join([word] * tokens)


def test_usage_counts_prompts_with_the_builtin_tokenizer():
    """The server's prompt tokens are the builtin tokenizer's (it used a regex of its own that disagreed)."""
    text = "Hello, world! It's 2024. Extraordinary requests"

    async def scenario():
        options = ServerOptions(setup=_setup(), served_model_name=MODEL)
        async with running_server(options) as (base, _), aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/completions", json={
                    "prompt": text, "max_tokens": 2, "ignore_eos": True}) as response:
                plain = (await response.json())["usage"]["prompt_tokens"]
            async with session.post(f"{base}/v1/chat/completions", json={
                    "messages": [{"role": "system", "content": text}, {"role": "user", "content": text}],
                    "max_tokens": 2, "ignore_eos": True}) as response:
                chat = (await response.json())["usage"]["prompt_tokens"]
        return plain, chat

    plain, chat = asyncio.run(scenario())
    assert plain == count_tokens(text) and chat == 2 * count_tokens(text)
    # The old rule (every run of word characters is one token) counted 11 here: "2024" and the long words were
    # one token each.


def test_streaming_and_plain_completions_speak_openai():
    async def scenario():
        options = ServerOptions(setup=_setup(), served_model_name=MODEL,
                                output_lengths=parse_output_length_model("fixed:3"))
        async with running_server(options) as (base, _), aiohttp.ClientSession() as session:
            events, done = await _stream(session, f"{base}/v1/completions", {
                "model": MODEL, "prompt": _prompt(20), "max_tokens": 12, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}})
            assert done
            texts = [e["choices"][0]["text"] for e in events if e["choices"]]
            assert count_tokens("".join(texts)) == 12
            assert events[-2]["choices"][0]["finish_reason"] == "length"
            assert events[-1]["choices"] == [] and events[-1]["usage"] == {
                "prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}

            events, done = await _stream(session, f"{base}/v1/chat/completions", {
                "model": MODEL, "messages": [{"role": "user", "content": _prompt(9)}], "max_tokens": 5,
                "ignore_eos": True, "stream": True})
            assert done and events[0]["choices"][0]["delta"]["role"] == "assistant"
            content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
            assert count_tokens(content) == 5 and events[0]["object"] == "chat.completion.chunk"

            async with session.post(f"{base}/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": _prompt(30)}], "max_tokens": 7,
                    "ignore_eos": True}) as response:
                body = await response.json()
            assert response.status == 200 and body["object"] == "chat.completion"
            assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
            assert count_tokens(body["choices"][0]["message"]["content"]) == 7

            # Without ignore_eos the model picks the length (here fixed:3), capped by max_tokens.
            async with session.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 50}) as response:
                body = await response.json()
            assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "stop"

            async with session.get(f"{base}/v1/models") as response:
                models = await response.json()
            assert [m["id"] for m in models["data"]] == [MODEL]
            async with session.get(f"{base}/health") as response:
                assert response.status == 200

    asyncio.run(scenario())


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", 400),
    ("/v1/completions", b"[1, 2]", 400),
    ("/v1/completions", json.dumps({"model": MODEL}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": 5}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -1}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "9"}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "n": 3}).encode(), 400),
    ("/v1/completions", json.dumps({"model": "gpt-9", "prompt": "x"}).encode(), 404),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": _prompt(2048)}).encode(), 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": ""}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"model": MODEL}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"content": "x"}]}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 3}]}).encode(), 400),
    ("/v1/chat/completions",
     json.dumps({"model": MODEL, "messages": [{"role": "user", "content": _prompt(3000)}]}).encode(), 400),
    ("/v1/nothing", b"{}", 404),
]


def test_every_bad_request_gets_its_status_and_an_openai_error_and_the_server_survives():
    async def scenario():
        async with running_server(ServerOptions(setup=_setup(), served_model_name=MODEL)) as (base, _), \
                aiohttp.ClientSession() as session:
            for path, body, status in BAD_REQUESTS:
                async with session.post(base + path, data=body,
                                        headers={"Content-Type": "application/json"}) as response:
                    payload = await response.json()
                assert response.status == status, (path, body[:60])
                error = payload["error"]
                assert error["code"] == status and error["message"] and error["type"], payload
            async with session.get(f"{base}/v1/completions") as response:
                assert response.status == 405 and (await response.json())["error"]["code"] == 405
            async with session.post(f"{base}/v1/completions", json={
                    "model": MODEL, "prompt": "still alive", "max_tokens": 2, "ignore_eos": True}) as response:
                assert response.status == 200 and (await response.json())["usage"]["completion_tokens"] == 2

    asyncio.run(scenario())


def test_api_key_is_required_when_set():
    async def scenario():
        options = ServerOptions(setup=_setup(), served_model_name=MODEL, api_key="s3cret")
        async with running_server(options) as (base, _), aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/models") as response:
                assert response.status == 401 and (await response.json())["error"]["code"] == 401
            async with session.get(f"{base}/v1/models", headers={"Authorization": "Bearer s3cret"}) as response:
                assert response.status == 200
            async with session.get(f"{base}/health") as response:
                assert response.status == 200

    asyncio.run(scenario())


def test_metrics_use_vllm_names_and_count_tokens():
    async def scenario():
        async with running_server(ServerOptions(setup=_setup(), served_model_name=MODEL)) as (base, _), \
                aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(f"{base}/v1/completions", json={
                        "model": MODEL, "prompt": _prompt(40), "max_tokens": 10, "ignore_eos": True}) as response:
                    assert response.status == 200
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
        labels = f'{{engine="0",model_name="{MODEL}"}}'

        def value(name):
            match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
            assert match, name
            return float(match.group(1))

        assert value("vllm:prompt_tokens_total") == 80
        # Both prompts were looked up in the prefix cache; the second, the same 40 tokens, found the first's two
        # full 16-token blocks (the last block is partial and never cached).
        assert value("vllm:prefix_cache_queries_total") == 80 and value("vllm:prefix_cache_hits_total") == 32
        assert value("vllm:generation_tokens_total") == 20
        assert value("vllm:num_preemptions_total") == 0
        assert value("vllm:num_requests_running") == 0 and value("vllm:num_requests_waiting") == 0
        assert 0 <= value("vllm:kv_cache_usage_perc") <= 1
        assert value("vllm:time_to_first_token_seconds_count") == 2
        assert value("vllm:time_per_output_token_seconds_count") == 2
        assert 'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.005"' in text

    asyncio.run(scenario())


def test_no_server_deadline_and_queue_limit():
    """The 30 s of the paper is a client timeout: the server keeps answering past `timeout_s` (no 504), and
    still refuses arrivals beyond its queue limit."""
    async def scenario():
        options = ServerOptions(setup=_setup(timeout_s=0.4, max_num_seqs=1), served_model_name=MODEL, max_queue=1)
        async with running_server(options) as (base, _), aiohttp.ClientSession() as session:
            long_body = {"model": MODEL, "prompt": "x", "max_tokens": 200, "ignore_eos": True}
            started = time.perf_counter()
            events, done = await _stream(session, f"{base}/v1/completions", {**long_body, "stream": True})
            assert time.perf_counter() - started > 0.4  # longer than timeout_s, answered in full
            assert done and sum(1 for e in events if e.get("choices") and "text" in e["choices"][0]) == 201

            async def plain():
                async with session.post(f"{base}/v1/completions", json=long_body) as response:
                    return response.status, await response.json()

            first = asyncio.create_task(plain())
            await asyncio.sleep(0.1)  # the first one is running now
            second = asyncio.create_task(plain())
            await asyncio.sleep(0.02)  # the second one waits in the queue
            third_status, third = await plain()
            assert third_status == 429 and third["error"]["code"] == 429
            assert (await first)[0] == 200 and (await second)[0] == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_disconnect_aborts_the_request_and_frees_its_kv(stream):
    """Like vLLM's API server, serve-sim aborts a request whose client goes away, streamed or not, at the end
    of the current step: its KV blocks are freed. (A stream used to notice only at its next token's write; a
    request answered whole kept its KV until it had generated all its tokens.)"""
    async def scenario():
        latency = LinearLatency(0.01, 0.0, 0.0)  # 10 ms per step: 2000 tokens would take 20 s
        options = ServerOptions(setup=_setup(latency, timeout_s=None), served_model_name=MODEL)
        async with running_server(options) as (base, server), aiohttp.ClientSession() as session:
            body = {"model": MODEL, "prompt": _prompt(100), "max_tokens": 1900, "ignore_eos": True, "stream": stream}

            async def talk():
                async with session.post(f"{base}/v1/completions", json=body) as response:
                    await response.content.readline()  # streamed: the first token; else it waits for the end
                    await asyncio.sleep(60)

            client = asyncio.create_task(talk())
            assert await _eventually(lambda: server.engine.kv_blocks_used > 0)  # it runs, holding KV
            await asyncio.sleep(0.2)
            client.cancel()  # the client gives up: its connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await client
            assert await _eventually(lambda: server.engine.kv_blocks_used == 0)
            assert server.engine.num_running == 0 and server.engine.num_waiting == 0
            await asyncio.sleep(0.05)  # a step later: /metrics shows it too
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
            usage = re.search(r"^vllm:kv_cache_usage_perc\{[^}]*\} (\S+)$", text, re.M)
            assert usage and float(usage.group(1)) == 0.0
            assert server.engine.generated_tokens(0) < 100  # stopped long before its 1900 tokens

    asyncio.run(scenario())


async def _eventually(condition, timeout_s: float = 2.0) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def test_fault_injection():
    async def scenario():
        body = {"model": MODEL, "prompt": "x", "max_tokens": 20, "ignore_eos": True}
        errors = ServerOptions(setup=_setup(), served_model_name=MODEL, faults=FaultOptions(error_rate=1.0))
        async with running_server(errors) as (base, _), aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/completions", json=body) as response:
                assert response.status == 500 and (await response.json())["error"]["code"] == 500
        drops = ServerOptions(setup=_setup(), served_model_name=MODEL, faults=FaultOptions(drop_rate=1.0))
        async with running_server(drops) as (base, _), aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                await _stream(session, f"{base}/v1/completions", {**body, "stream": True})
            async with session.get(f"{base}/health") as response:
                assert response.status == 200
        slow = ServerOptions(setup=_setup(), served_model_name=MODEL,
                             faults=FaultOptions(slow_first_token_rate=1.0, slow_first_token_s=0.5))
        async with running_server(slow) as (base, _), aiohttp.ClientSession() as session:
            started = time.perf_counter()
            async with session.post(f"{base}/v1/completions", json={**body, "stream": True}) as response:
                async for raw in response.content:
                    if raw.startswith(b"data: {"):
                        break
                ttft = time.perf_counter() - started
                await response.read()
            assert ttft >= 0.5

    asyncio.run(scenario())


def test_offline_and_real_time_median_latency_agree():
    """The same workload through `simulate_workload` and through serve-sim in real time."""
    rng = np.random.default_rng(7)
    count = 30
    arrival = np.cumsum(rng.exponential(0.12, count))
    prompt = rng.integers(50, 600, count)
    output = rng.integers(20, 80, count)
    setup = build_engine_setup(EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat", num_gpu_blocks=150,
                                          max_model_len=960))
    workload = conform_workload(pl.DataFrame({"arrival_s": arrival, "input_tokens": prompt, "output_tokens": output}))
    offline = simulate_workload(workload, setup).records
    offline_e2e = (offline["end_s"] - offline["scheduled_s"]).median()

    async def scenario():
        async with running_server(ServerOptions(setup=setup)) as (base, _), aiohttp.ClientSession() as session:
            start = asyncio.get_running_loop().time()

            async def one(i):
                await asyncio.sleep(max(0.0, start + arrival[i] - asyncio.get_running_loop().time()))
                sent = asyncio.get_running_loop().time()
                events, done = await _stream(session, f"{base}/v1/completions", {
                    "model": setup.model_name, "prompt": _unique_prompt(i, int(prompt[i])), "max_tokens": int(output[i]),
                    "ignore_eos": True, "stream": True})
                assert done
                return asyncio.get_running_loop().time() - sent

            return await asyncio.gather(*(one(i) for i in range(count)))

    online = np.array(asyncio.run(scenario()))
    assert offline["preemptions"].sum() > 0  # the small cache makes the case non-trivial
    print(f"median end-to-end latency: offline {offline_e2e:.3f} s, real time {np.median(online):.3f} s")
    assert np.median(online) == pytest.approx(offline_e2e, rel=0.10)


def test_serve_sim_command_prints_its_url_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "burstgpt.cli", "serve-sim", "--port", "0", "--gpu", "h100",
         "--model", "llama-2-7b", "--served-model-name", MODEL, "--max-num-seqs", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        assert match, line

        async def ask():
            async with aiohttp.ClientSession() as session, session.post(f"{match.group(1)}/v1/completions", json={
                    "model": MODEL, "prompt": "hello there", "max_tokens": 3, "ignore_eos": True}) as response:
                return await response.json()

        assert asyncio.run(ask())["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "stopped" in process.stdout.read()
        err = process.stderr.read()
        assert "--gpu h100: using preset H100-80GB" in err and "--model llama-2-7b: using preset Llama-2-7B-chat" in err
        # --max-num-seqs as given; the token budget vLLM's default for an 80 GB H100 (its OpenAI server's).
        assert "KV blocks x 16 tokens; max_num_seqs 32; max_num_batched_tokens 8192" in err
        assert "latency roofline H100-80GB x Llama-2-7B-chat" in err
        assert "client timeout none" in err  # the server has no deadline of its own
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


CONTEXT_CASES = [
    # (body, HTTP status, offending parameter); the context is 2048 tokens.
    ({"prompt": "x", "max_tokens": 100000000000}, 400, "max_tokens"),
    ({"prompt": _prompt(2000), "max_tokens": 49}, 400, "max_tokens"),
    ({"prompt": _prompt(2000), "max_tokens": 48}, 200, None),
    ({"prompt": _prompt(2047)}, 200, None),  # the default (16) is capped by the room left, as vLLM does
    ({"prompt": _prompt(2048)}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 9.5}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": _prompt(10)}], "max_completion_tokens": 2039}, 400,
     "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": _prompt(10)}], "max_tokens": 2038}, 200, None),
]


def test_prompt_plus_max_tokens_over_the_context_is_refused_as_vllm_does():
    async def scenario():
        options = ServerOptions(setup=_setup(), served_model_name=MODEL,
                                output_lengths=parse_output_length_model("fixed:1"))
        async with running_server(options) as (base, _), aiohttp.ClientSession() as session:
            for body, status, param in CONTEXT_CASES:
                path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                async with session.post(base + path, json=body) as response:
                    payload = await response.json()
                assert response.status == status, (body, payload)
                if status == 400:
                    error = payload["error"]
                    assert (error["code"], error["type"], error["param"]) == (400, "BadRequestError", param), payload
                if body.get("max_tokens") == 100000000000:
                    assert error["message"] == (
                        "This model's maximum context length is 2048 tokens. However, you requested 100000000001 "
                        "tokens (1 in the prompt, 100000000000 in the completion). Please reduce the length of the "
                        "prompt or completion.")

    asyncio.run(scenario())


def test_time_scale_k_runs_k_times_faster_than_real_time():
    """Every step lasts 0.05 simulated seconds: 20 tokens take 1 simulated second, 0.25 s of wall time at K = 4
    (the flag used to mean wall seconds per simulated second: 4 s)."""
    latency = LinearLatency(base_s=0.05, per_prefill_token_s=0.0, per_decode_token_s=0.0)

    async def scenario():
        options = ServerOptions(setup=_setup(latency), served_model_name=MODEL, time_scale=4.0)
        async with running_server(options) as (base, _), aiohttp.ClientSession() as session:
            started = time.perf_counter()
            async with session.post(f"{base}/v1/completions", json={
                    "prompt": "x", "max_tokens": 20, "ignore_eos": True}) as response:
                assert response.status == 200
            wall = time.perf_counter() - started
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
        return wall, text

    wall, text = asyncio.run(scenario())
    assert 0.24 <= wall < 0.6
    # Latency histograms are in wall seconds: 1 simulated second / 4.
    match = re.search(r'^vllm:e2e_request_latency_seconds_sum\{[^}]*\} (\S+)$', text, re.M)
    assert float(match.group(1)) == pytest.approx(0.25, abs=0.03)


def test_prompts_sharing_a_prefix_hit_the_prefix_cache_and_unique_ones_do_not():
    """serve-sim keys every prompt's full KV blocks by their tokens (chained), so a real client's shared system
    prompt is found in the cache as on vLLM: 5 requests = a 100-token shared prefix + their own 30 tokens."""
    shared = " ".join(["system"] * 100)  # 100 builtin tokens

    async def scenario(prompts):
        async with running_server(ServerOptions(setup=_setup(), served_model_name=MODEL)) as (base, _), \
                aiohttp.ClientSession() as session:
            for prompt in prompts:
                async with session.post(f"{base}/v1/completions", json={
                        "model": MODEL, "prompt": prompt, "max_tokens": 2, "ignore_eos": True}) as response:
                    assert response.status == 200
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
        hits = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", text, re.M)
        return float(hits.group(1))

    tokenizer = builtin_tokenizer()
    own = [_unique_prompt(r, 30) for r in range(5)]  # 30 tokens each, all different
    assert tokenizer.count([shared])[0] == 100 and set(tokenizer.count(own)) == {30}
    # Every later request finds the 6 full blocks (96 tokens) of the shared 100-token prefix.
    assert asyncio.run(scenario([shared + " " + q for q in own])) == 4 * 96
    assert asyncio.run(scenario([q + " " + shared for q in own])) == 0  # no common prefix: no hit
