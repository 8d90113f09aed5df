"""The AI Horde v2 API's text generation: async requests, status, the workers' pop/submit."""
