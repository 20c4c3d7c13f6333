"""The OpenAI Batch API on queue-driven, scale-to-zero llama.cpp workers."""
