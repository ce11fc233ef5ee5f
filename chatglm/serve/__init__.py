"""An OpenAI-compatible HTTP server for a base ChatGLM and its tuned checkpoints (P-tuning
prefixes, a LoRA adapter), every request in flight a row of one continuous batch.

    protocol.py  the request bodies it accepts (checked field by field) and the shapes it answers in
    worker.py    the engine on its own thread: requests in, each request's tokens out
    app.py       the FastAPI routes: /v1/models, /v1/chat/completions, /v1/completions
    __main__.py  `python -m chatglm.serve`: load, then serve with uvicorn (graceful SIGTERM)
"""
