"""vLLM's Prometheus histogram bucket bounds (seconds), shared by serve-sim's exposition and the client's exporter
so a client histogram and the server's for the same quantity line up bucket for bucket."""

#: vLLM's time-to-first-token buckets.
VLLM_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: vLLM's time-per-output-token (and inter-token latency) buckets.
VLLM_TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0)
#: vLLM's REQUEST_LATENCY_BUCKETS: end-to-end, queue, inference, prefill and decode times.
VLLM_REQUEST_LATENCY_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                                  120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
