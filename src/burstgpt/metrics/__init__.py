"""burstgpt.metrics"""
