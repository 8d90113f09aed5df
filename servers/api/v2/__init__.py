"""The AI Horde v2 API's workers endpoints."""
