"""burstgpt.server"""
