"""Model providers over two wire formats (OpenAI Chat Completions, Anthropic Messages)."""
