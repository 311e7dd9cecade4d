"""Serving chat models: `python -m apps.serve` (`make serve`).

door.py      what every request passes first (Host, JSON only, no CORS, bounded bodies) and errors as JSON
protocol.py  the OpenAI chat-completions request, checked, and errors in OpenAI's format
scheduler.py continuous batching: every request in flight shares each step of the sampling loop
app.py       the FastAPI app: /v1/chat/completions, /v1/models, /health, and the page at /
static/      the chat page (plain HTML/JS/CSS, nothing fetched from elsewhere)
__main__.py  the command line: load the models, bind 127.0.0.1 unless told otherwise, run uvicorn
"""
