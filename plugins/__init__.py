"""emostream.plugins"""
