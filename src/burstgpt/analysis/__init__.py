"""burstgpt.analysis"""
