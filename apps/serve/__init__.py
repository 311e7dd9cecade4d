"""Serving chat models: `python -m apps.serve` (`make serve`).

door.py      what every request passes first (Host, JSON only, no CORS, bounded bodies) and errors as JSON
protocol.py  the OpenAI chat-completions request, checked, and errors in OpenAI's format
scheduler.py continuous batching: every request in flight shares each step of the sampling loop
app.py       the FastAPI app: /v1/chat/completions, /v1/models, /v1/feedback, /health, and the page at /
feedback.py  POST /v1/feedback and its status: ranking or rating answers by completion id (data/feedback.py)
feedback_sim.py  a simulated person who ranks a running server's answers through that API
static/      the chat page (plain HTML/JS/CSS, nothing fetched from elsewhere)
__main__.py  the command line: load the models, bind 127.0.0.1 unless told otherwise, run uvicorn
"""
