"""burstgpt.report"""
