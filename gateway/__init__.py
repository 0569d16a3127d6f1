"""The HTTP side: OpenAI-compatible chat, the approvals API, the first-version protocol."""
