"""Export a checkpoint for other tools: Hugging Face transformers, llama.cpp (GGUF), Ollama."""
