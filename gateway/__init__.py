"""The HTTP side of the approval gateway: OpenAI-compatible chat, approvals API, first-version protocol."""
