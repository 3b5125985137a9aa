"""`captioning serve`: the captioner over HTTP, on FastAPI and uvicorn.

Run: python -m captioning serve [--host 127.0.0.1] [--port 8000] [--checkpoint P | --model model.onnx]
Then: curl -F image=@photo.jpg http://127.0.0.1:8000/caption   (OpenAPI docs at /docs)

Images that arrive together, in one request or in several, are batched through the model (`Batcher`). The bounds
are the app's: bytes per file and per request, files per request, pixels and concurrent decodes (`decodebudget`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Annotated

import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from captioning.config import DecodeConfig
from captioning.data import ImageLoadError, load_image, to_rgb
from captioning.decodebudget import DecodeBusyError

MAX_FILES = 16  # images per request
MAX_FILE_BYTES = 25_000_000  # per image, as the app's uploads
MAX_REQUEST_BYTES = 120_000_000  # a whole request body, counted as it arrives
MAX_BATCH = 4  # images the model encodes and decodes together (4 was fastest on 2 cores: see bench_batch)
MAX_BEAM, MAX_LEN = 10, 60  # decoding work per image is bounded too
BATCH_WAIT_S = 0.005  # how long the first image of a batch waits for others to join it


@dataclass
class Failure:
    status: int
    reason: str


class Batcher:
    """Collects images from concurrent requests and runs them through the captioner a batch at a time, on one
    thread of its own (the model's threads do the parallel work)."""

    def __init__(self, captioner, max_batch: int = MAX_BATCH, wait_s: float = BATCH_WAIT_S) -> None:
        self.captioner, self.max_batch, self.wait_s = captioner, max_batch, wait_s
        self.queue: asyncio.Queue | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks

    async def caption(self, pixels: torch.Tensor, decoding: DecodeConfig, size: tuple[int, int] | None = None):
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(((pixels, size), decoding, future))
        return await future

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(items) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            for decoding in dict.fromkeys(d for _, d, _ in items):  # one batch per decoding, in arrival order
                group = [(x, f) for x, d, f in items if d == decoding]
                self.batches.append(len(group))
                try:
                    caps = await asyncio.get_running_loop().run_in_executor(
                        self.pool, self._caption, [x for x, _ in group], decoding
                    )
                except Exception as exc:  # noqa: BLE001 - every waiting request gets an answer
                    caps = [exc] * len(group)
                for (_, future), cap in zip(group, caps, strict=True):
                    if not future.done():
                        future.set_exception(cap) if isinstance(cap, Exception) else future.set_result(cap)

    def _caption(self, items: list[tuple[torch.Tensor, tuple[int, int] | None]], decoding: DecodeConfig):
        pixels = torch.stack([x for x, _ in items])
        return self.captioner.caption_features(self.captioner.encode(pixels), decoding, pixels, [s for _, s in items])


def prepare(data: bytes, name: str, preprocess) -> tuple[torch.Tensor, tuple[int, int]] | Failure:
    """An uploaded image's preprocessed pixels (3, S, S) and its size as read, or why it cannot be captioned."""
    if len(data) > MAX_FILE_BYTES:
        return Failure(413, f"{name} is larger than {MAX_FILE_BYTES // 1_000_000} MB")
    try:
        image = to_rgb(load_image(data, name))
        return preprocess(image), image.size
    except ImageLoadError as exc:
        return Failure(400, str(exc))
    except DecodeBusyError as exc:
        return Failure(503, str(exc))


def answer(cap, details: bool) -> dict:
    """One image's result in the shape of Hugging Face's image-to-text pipeline, plus what `details` asks for."""
    out = {"generated_text": cap.text, "unsure": cap.unsure, "doubts": cap.doubts}  # "" and [] when sure
    if details:
        out["words"] = [{"word": w, "prob": round(p, 4)} for w, p in zip(cap.words, cap.word_probs)]
        out["alternatives"] = [{"generated_text": h.text, "score": round(h.score, 4)} for h in cap.alternatives]
        out["tags"] = [{"label": label, "score": round(p, 4)} for label, p in cap.tags]
        out["named"] = {"label": cap.named[0], "score": round(cap.named[1], 4)} if cap.named else None
        found = cap.required  # what constrained decoding made the caption say
        out["required"] = (
            {"noun": found.noun, "score": round(found.prob, 4), "words": list(found.words)} if found else None
        )
    return out


class LimitBody:
    """ASGI middleware: a request body over `limit` bytes is refused with 413, from its Content-Length or as its
    bytes arrive, before the form parser spools it anywhere."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a body longer than it said: the app's error handler answers 413
                raise HTTPException(413, f"the request is larger than {self.limit // 1_000_000} MB")
            return message

        await self.app(scope, counted, send)


async def _too_large(send, limit: int) -> None:
    body = JSONResponse({"detail": f"the request is larger than {limit // 1_000_000} MB"}, status_code=413)
    await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})


def build_app(captioner, model_info: dict | None = None):
    """The FastAPI application around a loaded captioner (a `Captioner` or an exported model's)."""
    app = FastAPI(title="Captioning studio API", version="1", description=__doc__.split("\n\n")[0])
    batcher = Batcher(captioner)
    app.state.batcher = batcher
    info = {"id": "default", **(model_info or {})}
    base = DecodeConfig()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": info["id"]}

    @app.get("/models")
    def models() -> list[dict]:
        return [info]

    @app.post("/caption")
    async def caption(
        image: Annotated[list[UploadFile], File(description=f"one or more images (at most {MAX_FILES})")],
        method: Annotated[str, Form()] = base.method,
        beam_size: Annotated[int, Form()] = base.beam_size,
        max_len: Annotated[int, Form()] = base.max_len,
        length_penalty: Annotated[float, Form()] = base.length_penalty,
        allow_repeats: Annotated[bool, Form()] = not base.block_repeats,
        name_novel: Annotated[bool, Form()] = base.name_novel,
        constrain: Annotated[float, Form(description="0: off; see --constrain")] = base.constrain,
        details: Annotated[bool, Form(description="word probabilities, alternatives and tags too")] = False,
    ):
        if len(image) > MAX_FILES:
            raise HTTPException(413, f"at most {MAX_FILES} images a request (got {len(image)})")
        if beam_size > MAX_BEAM or max_len > MAX_LEN:
            raise HTTPException(422, f"beam_size may be at most {MAX_BEAM} and max_len at most {MAX_LEN}")
        try:
            decoding = replace(base, method=method, beam_size=beam_size, max_len=max_len,
                               length_penalty=length_penalty, block_repeats=not allow_repeats,
                               name_novel=name_novel, constrain=constrain)  # fmt: skip
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        names = [(f.filename or "image")[:100] for f in image]
        datas = [await f.read(MAX_FILE_BYTES + 1) for f in image]
        prepared = [await run_in_threadpool(prepare, d, n, captioner.preprocess) for d, n in zip(datas, names)]
        jobs = [batcher.caption(p[0], decoding, p[1]) for p in prepared if not isinstance(p, Failure)]
        caps = iter(await asyncio.gather(*jobs))
        results = []
        for name, p in zip(names, prepared, strict=True):
            if isinstance(p, Failure):
                results.append({"file": name, "error": p.reason, "status": p.status})
            else:
                results.append({"file": name, **answer(next(caps), details)})
        failures = [p.status for p in prepared if isinstance(p, Failure)]
        status = 200 if len(failures) < len(prepared) else Counter(failures).most_common(1)[0][0]
        return JSONResponse(results, status_code=status)

    return LimitBody(app)


def serve(captioner, host: str, port: int, model_info: dict | None = None) -> None:
    import uvicorn

    uvicorn.run(build_app(captioner, model_info), host=host, port=port, log_level="info", access_log=False)
