"""`hoe serve`: an OpenAI-compatible HTTP server over hoe.runtime with a preference per request, and
continuous batching across preferences (one decode step for requests of different preferences).

    hoe serve out/my-hoe --port 8000 --max-batch 8
    curl localhost:8000/v1/chat/completions -d '{"model": "my-hoe", "messages": [{"role": "user",
         "content": "Hi"}], "preference": [0.2, 0.5, 0.3]}'

Imports only hoe.runtime and the `serve` extra (starlette, uvicorn, prometheus-client): no torch.
"""
