"""`evolkit serve`: one loaded model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from evolkit.cli.common import app
from evolkit.console import console


@app.command()
def serve(
    model: Annotated[
        str, typer.Option(help="Model to serve: 'embedded' or a Hugging Face model folder.")
    ] = "embedded",
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface, no auth!).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most requests answered by one forward pass.")
    ] = 16,
    batch_wait_ms: Annotated[
        float,
        typer.Option(min=0.0, help="How long a request waits for others to join its batch."),
    ] = 10.0,
) -> None:
    """Serve a local model as an OpenAI-compatible server (chat, completions, logprobs).

    Several evolkit jobs can share it with --backend openai --base-url http://HOST:PORT/v1.
    """
    from evolkit.models import BackendFactory, ModelSpec
    from evolkit.serve import create_app, listen, run_server

    sock = listen(host, port)
    factory = BackendFactory(None)  # no call cache: a server answers fresh
    try:
        backend = factory.get(ModelSpec(model=model, backend="local", batch_size=max_batch))
        api = create_app(backend, max_batch=max_batch, batch_wait_ms=batch_wait_ms, aliases=[model])
        bound = sock.getsockname()[1]
        console.print(
            f"serving {backend.model_id} at http://{host}:{bound}/v1 "
            f"(batches of up to {max_batch}; Ctrl-C stops)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        run_server(api, sock)
    finally:
        sock.close()
        factory.close()
