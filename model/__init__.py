"""emostream.model"""
