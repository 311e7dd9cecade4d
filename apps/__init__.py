"""Apps that talk to a trained model: the terminal chat (apps.chat) and the OpenAI-compatible server (apps.serve)."""
