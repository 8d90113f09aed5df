"""The AI Horde v2 API's text statistics."""
