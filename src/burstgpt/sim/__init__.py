"""burstgpt.sim"""
