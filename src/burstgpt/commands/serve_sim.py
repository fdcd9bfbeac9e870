"""`burstgpt serve-sim`: an OpenAI-compatible simulated server on 127.0.0.1, the simulator's engine in real time."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math

from burstgpt.commands.simulate import add_engine_arguments, engine_spec_from_args, print_engine_settings
from burstgpt.errors import BurstGPTError
from burstgpt.sim.simulate import build_engine_setup
from burstgpt.sim.output_lengths import parse_output_length_model


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve-sim",
        help="an OpenAI-compatible server backed by the simulated engine",
        description="Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics from the "
        "simulated engine running in real time. Prints 'serving on URL' once listening; stops on SIGTERM/Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: --model)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                        help="run K times faster than real time: K simulated seconds per wall second, as "
                        "`workload --time-scale K` compresses time (default 1)")
    parser.add_argument("--tokenizer", default="builtin", metavar="SPEC",
                        help="how prompt tokens are counted: builtin (default), a tokenizer.json file or a locally "
                        "cached transformers tokenizer name")
    parser.add_argument("--seed", type=int, default=0, help="seed of the output-length draws (default 0)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    faults = parser.add_argument_group("fault injection (each drawn per request, seeded by --fault-seed)")
    faults.add_argument("--fault-error-rate", type=float, default=0.0, help="answer HTTP 500 at once")
    faults.add_argument("--fault-drop-rate", type=float, default=0.0, help="cut the connection part-way")
    faults.add_argument("--fault-stall-rate", type=float, default=0.0, help="pause the stream once, part-way")
    faults.add_argument("--fault-stall-s", type=float, default=5.0, help="stall length, seconds (default 5)")
    faults.add_argument("--fault-slow-first-token-rate", type=float, default=0.0,
                        help="hold the first token back")
    faults.add_argument("--fault-slow-first-token-s", type=float, default=2.0,
                        help="first-token delay, seconds (default 2)")
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (default 0)")
    add_engine_arguments(parser)
    parser.set_defaults(func=run_serve_sim)


def run_serve_sim(args: argparse.Namespace) -> int:
    from burstgpt.server.app import FaultOptions, ServerOptions, serve
    from burstgpt.workload.tokenizer import load_tokenizer

    if not (args.time_scale > 0 and math.isfinite(args.time_scale)):
        raise BurstGPTError(f"--time-scale must be a positive number, got {args.time_scale}")
    if not 0 <= args.port <= 65535:
        raise BurstGPTError("--port must be in 0..65535")
    rates = ("fault_error_rate", "fault_drop_rate", "fault_stall_rate", "fault_slow_first_token_rate")
    for name in rates:
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise BurstGPTError(f"--{name.replace('_', '-')} must be within 0..1")
    tokenizer = load_tokenizer(args.tokenizer)
    # A real server has no deadline of its own (clients time out and disconnect; the engine then aborts): the
    # settings printed below say so rather than the offline simulation's client timeout.
    setup = build_engine_setup(dataclasses.replace(engine_spec_from_args(args), timeout_s=None))
    options = ServerOptions(
        setup=setup, host=args.host, port=args.port, served_model_name=args.served_model_name,
        time_scale=args.time_scale, output_lengths=parse_output_length_model(args.output_lengths), seed=args.seed,
        api_key=args.api_key, max_queue=args.max_queue, tokenizer=tokenizer,
        faults=FaultOptions(
            error_rate=args.fault_error_rate, drop_rate=args.fault_drop_rate, stall_rate=args.fault_stall_rate,
            stall_s=args.fault_stall_s, slow_first_token_rate=args.fault_slow_first_token_rate,
            slow_first_token_s=args.fault_slow_first_token_s, seed=args.fault_seed,
        ),
    )
    print_engine_settings(setup, args)
    try:
        asyncio.run(serve(options))
    except OSError as exc:
        raise BurstGPTError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
