"""burstgpt: face LLM serving systems with real-world bursty load.

Data flows one way: trace -> analysis (fits) -> workload -> client or sim -> records -> metrics -> report.
"""

__version__ = "0.1.0"
