"""The OpenAI-compatible Files API: file rows, their bytes in the files storage, uploads checked as they stream."""
