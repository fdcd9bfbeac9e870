"""burstgpt.client"""
