"""The OpenAI API's completions and chat completions, as OpenAI clients speak it."""
