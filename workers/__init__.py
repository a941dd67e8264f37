"""emostream.workers"""
