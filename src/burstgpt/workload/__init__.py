"""burstgpt.workload"""
