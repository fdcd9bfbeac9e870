"""burstgpt.trace"""
