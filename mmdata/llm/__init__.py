"""LLM-written instruction templates: generation against any OpenAI-compatible endpoint (chat or
few-shot completion), validation, review, and a bundled local llama.cpp server."""
