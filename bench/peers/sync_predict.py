"""Peer (a) of `eldefect bench`: the simplest server there is, to measure ourselves against.

A synchronous FastAPI `POST /predict` that decodes the upload and runs the model with eager
PyTorch inside the request, one image per request, as the project's first prototype served
it. Same model, same decoding and preprocessing as our worker; no queue, no database.

    python bench/peers/sync_predict.py --port 8123 \
        --model-uri models:/el_defect_classifier@production
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, UploadFile

from eldefect.imaging import ImageDecodeError, decode_gray
from eldefect.preprocess import preprocess_batch
from eldefect.registry import load_model


def create_app(model_uri: str, max_pixels: int) -> FastAPI:
    model, card = load_model(model_uri)
    spec, labels = card.input_spec, card.labels
    app = FastAPI(title="sync predict peer")

    @app.post("/predict")
    def predict(file: UploadFile) -> dict[str, float]:
        try:
            gray = decode_gray(file.file.read(), max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise HTTPException(422, exc.message) from None
        with torch.inference_mode():
            probs = torch.sigmoid(model(preprocess_batch([gray], spec)))[0]  # (C,)
        return dict(zip(labels, probs.tolist(), strict=True))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    opts = parser.parse_args()
    app = create_app(opts.model_uri, opts.max_pixels)
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning")


if __name__ == "__main__":
    main()
