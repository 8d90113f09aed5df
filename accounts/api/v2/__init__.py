"""The AI Horde v2 API's accounts: registration, API keys, users, kudos."""
