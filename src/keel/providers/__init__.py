"""Model providers: the local llama.cpp runtime, OpenAI-compatible servers, embeddings."""
