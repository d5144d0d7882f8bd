"""The request layer on its own: every field's check, the defaults from the model, hostile values and files.

No model runs here: the model's facts are written out (those of the tiny models), so each case
takes microseconds and proves its limit without using what the limit protects.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("diffusers")

from examples.stable_diffusion.apps.errors import BodyError, RequestError
from examples.stable_diffusion.apps.requests import (
    MAX_SEED,
    PROMPT,
    TASKS,
    Limits,
    ModelFacts,
    decode_image,
    fields_of,
    json_body,
    parse,
)

from .helpers import b64, raises, sample_images

FACTS = ModelFacts(default_size=64, size_multiple=16, max_pixels=128 * 128, max_call_pixels=8 * 128 * 128)
"""The tiny random-weight models' facts on a machine with memory to spare."""


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sample_images(tmp_path_factory.mktemp("pictures"))


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_defaults_come_from_the_model() -> None:
    # What the built-in digits model draws well with (models/MODEL_CARD.md): a digit, 25 steps, guidance 5.
    request = parse("txt2img", {}, FACTS)
    assert (request.prompt, request.negative_prompt, request.steps, request.guidance, request.seed) == (
        "a handwritten 7",
        None,
        25,
        5.0,
        0,
    )
    assert request.prompt == PROMPT
    assert (request.scheduler, request.width, request.height, request.batch) == ("model", 64, 64, 1)
    # The digits model: UNet sample_size 8 x VAE factor 4, two UNet levels.
    digits = ModelFacts(default_size=32, size_multiple=8, max_pixels=64 * 64, max_call_pixels=8 * 64 * 64)
    assert (parse("txt2img", {}, digits).width, parse("txt2img", {}, digits).height) == (32, 32)
    xl = ModelFacts(default_size=1024, size_multiple=32, max_pixels=2048**2, max_call_pixels=2048**2)
    assert (parse("txt2img", {}, xl).width, parse("txt2img", {}, xl).height) == (1024, 1024)
    # The page's sliders send whole numbers as floats; so may a JSON body.
    assert parse("txt2img", {"steps": 4.0, "width": 96.0}, FACTS).steps == 4
    assert parse("txt2img", {"steps": None}, FACTS).steps == 25  # null: the default


def test_image_tasks_take_the_image_size_and_their_strength(pictures: tuple[Path, Path]) -> None:
    image, mask = pictures
    img2img = parse("img2img", {"image": image}, FACTS)
    assert (img2img.width, img2img.height, img2img.strength, img2img.image is not None) == (64, 64, 0.8, True)
    # 72x40 rounds down to what the model runs: 64x32.
    odd = parse("img2img", {"image": png_bytes(72, 40)}, FACTS)
    assert (odd.width, odd.height) == (64, 32)
    inpaint = parse("inpaint", {"image": b64(image), "mask_image": "data:image/png;base64," + b64(mask)}, FACTS)
    assert (inpaint.strength, inpaint.width, inpaint.mask_image is not None) == (1.0, 64, True)
    assert inpaint.mask_image is not None and inpaint.mask_image.mode == "L"


def test_the_server_takes_every_field_but_batch() -> None:
    for task, fields in TASKS.items():
        served = [f.name for f in fields_of(task, server=True)]
        assert served == [f.name for f in fields if f.name != "batch"], task
    with raises(
        RequestError,
        "batch: unknown field; the fields are prompt, negative_prompt, steps, guidance, seed, scheduler, width, height",
    ):
        parse("txt2img", {"batch": 2}, FACTS, server=True)


BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "txt2img",
        {"step": 3},
        "step: unknown field; the fields are prompt, negative_prompt, steps, guidance, seed, "
        "scheduler, width, height, batch",
    ),
    ("txt2img", {"steps": 0}, "steps: must be at least 1, got 0"),
    ("txt2img", {"steps": 10**9}, "steps: must be at most 150 (the most steps one request may run), got 1000000000"),
    ("txt2img", {"steps": "many"}, 'steps: expected a whole number, got "many" (str)'),
    ("txt2img", {"steps": True}, "steps: expected a whole number, got true (bool)"),
    ("txt2img", {"steps": 4.5}, "steps: expected a whole number, got 4.5 (float)"),
    ("txt2img", {"guidance": float("nan")}, "guidance: must be a finite number, got nan"),
    ("txt2img", {"guidance": float("inf")}, "guidance: must be a finite number, got inf"),
    ("txt2img", {"guidance": 1e308}, "guidance: must be at most 30 (far above any useful guidance), got 1e+308"),
    ("txt2img", {"guidance": -1}, "guidance: must be at least 0, got -1"),
    ("txt2img", {"guidance": "high"}, 'guidance: expected a number, got "high" (str)'),
    ("txt2img", {"seed": -1}, "seed: must be at least 0, got -1"),
    (
        "txt2img",
        {"seed": 2**64},
        f"seed: must be at most {MAX_SEED} (2**53 - 1, the largest whole number a browser "
        f"holds exactly), got 18446744073709551616",
    ),
    (
        "txt2img",
        {"scheduler": ["pndm"]},
        'scheduler: expected one of model, pndm, ddim, euler, euler-ancestral, dpm++, unipc, got ["pndm"] (list)',
    ),
    (
        "txt2img",
        {"scheduler": "lms"},
        'scheduler: expected one of model, pndm, ddim, euler, euler-ancestral, dpm++, unipc, got "lms" (str)',
    ),
    (
        "txt2img",
        {"prompt": "a cat \ud800 on a mat"},
        "prompt: not valid Unicode: a lone surrogate '\\ud800' at index 6; send UTF-8 text",
    ),
    ("txt2img", {"negative_prompt": 3}, "negative_prompt: expected text, got 3 (int)"),
    (
        "txt2img",
        {"prompt": "x" * 10_001},
        "prompt: 10001 characters, more than the 10000 taken (the text encoder "
        "reads the first 77 tokens); send a shorter text",
    ),
    (
        "txt2img",
        {"width": 100},
        "width: must be a multiple of 16 (this model's VAE scale factor x UNet downsampling), got 100; try 96",
    ),
    ("txt2img", {"height": 8}, "height: must be at least 16, got 8"),
    (
        "txt2img",
        {"width": 100000, "height": 100000},
        "width: must be at most 256 (the longest side this model makes), got 100000",
    ),
    (
        "txt2img",
        {"width": 256, "height": 128},
        "width: 256x128 is 32768 pixels, more than the 16384 this model makes "
        "at most (four times its default 64x64); ask for less",
    ),
    ("txt2img", {"batch": 9}, "batch: must be at most 8 (the most images one request may make), got 9"),
    ("img2img", {}, "image: missing; send the starting image, a PNG, JPEG or WebP file"),
    ("img2img", {"image": 3}, "image: expected a base64-encoded PNG as text, got 3 (int)"),
    (
        "img2img",
        {"image": "not base64!"},
        "image: not valid base64 (Only base64 data is allowed); send the PNG file's bytes base64-encoded (base64 -w0)",
    ),
    ("img2img", {"image": "PNG", "strength": 1.5}, "strength: must be at most 1, got 1.5"),
    (
        "img2img",
        {"image": "PNG", "strength": 0.02},
        "strength: 0.02 of 25 steps runs no step; raise strength to at least 0.04 or the steps",
    ),
    (
        "img2img",
        {"image": "PNG", "width": 64},
        "width: unknown field; the fields are prompt, negative_prompt, image, "
        "strength, steps, guidance, seed, scheduler, batch",
    ),
    ("inpaint", {"image": "PNG"}, "mask_image: missing; send the mask: white where to repaint, black where to keep"),
    (
        "inpaint",
        {"image": "PNG", "mask_image": "@@"},
        "mask_image: not valid base64 (Only base64 data is allowed); "
        "send the PNG file's bytes base64-encoded (base64 -w0)",
    ),
]


@pytest.mark.parametrize(
    ("task", "values", "message"), BAD, ids=[m.split(":")[0] + "-" + str(i) for i, (_, _, m) in enumerate(BAD)]
)
def test_a_bad_value_is_refused_naming_its_field(
    pictures: tuple[Path, Path], task: str, values: dict[str, Any], message: str
) -> None:
    values = {key: b64(pictures[0]) if value == "PNG" else value for key, value in values.items()}
    with raises(RequestError, message) as caught:
        parse(task, values, FACTS)
    assert caught.value.field == message.split(":", 1)[0]
    assert caught.value.status == 422


def test_the_memory_limits_a_call() -> None:
    small = ModelFacts(
        default_size=64, size_multiple=16, max_pixels=128 * 128, max_call_pixels=3 * 64 * 64, memory_note="0.01 GiB"
    )
    assert parse("txt2img", {"batch": 3}, small).pixels == 3 * 64 * 64
    with raises(
        RequestError,
        "batch: 4 x 64x64 is 16384 pixels, more than the 12288 one call may make here "
        "(0.01 GiB); ask for fewer or smaller images",
    ):
        parse("txt2img", {"batch": 4}, small)
    with raises(
        RequestError,
        "width: 1 x 128x128 is 16384 pixels, more than the 12288 one call may make here "
        "(0.01 GiB); ask for fewer or smaller images",
    ):
        parse("txt2img", {"width": 128, "height": 128}, small)


# ---------------------------------------------------------------------- image files


def test_an_image_too_large_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 2048x2048 PNG of one colour is a few kilobytes; decoded it would be 12 MB (48 MB as RGBA floats).
    bomb = png_bytes(2048, 2048)
    assert len(bomb) < 20_000

    def no_decoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "convert", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with raises(
        RequestError,
        "image: a 2048x2048 image has 4194304 pixels, more than the 65536 taken for this model; send a smaller image",
    ):
        parse("img2img", {"image": bomb}, FACTS)


def test_pils_decompression_bomb_error_is_the_senders() -> None:
    # A header claiming 40000x40000 pixels: PIL refuses it itself (DecompressionBombError, not an OSError).
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    with pytest.raises(
        RequestError,
        match=r"^image: Image size \(1600000000 pixels\) exceeds limit .*decompression "
        r"bomb DOS attack.; send a smaller image$",
    ):
        decode_image("image", header + _chunk(b"IEND", b""), mode="RGB", max_pixels=10**12, max_bytes=10**6)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_files_that_are_not_images_or_too_big() -> None:
    with raises(RequestError, "image: 5 bytes that are not a PNG, JPEG or WebP file; send a PNG or JPEG file"):
        parse("img2img", {"image": b"hello"}, FACTS)
    broken = png_bytes(64, 64)[:-30]
    with pytest.raises(RequestError, match=r"^image: a broken image file of \d+ bytes \(\w+: .*\); send a PNG or JPEG"):
        parse("img2img", {"image": broken}, FACTS)
    with raises(RequestError, "image: a file of 17 bytes, more than the 16 taken; send a smaller file"):
        parse("img2img", {"image": b"x" * 17}, ModelFacts(64, 16, 16384, 16384, limits=Limits(max_image_bytes=16)))
    tiny = png_bytes(8, 8)
    with raises(
        RequestError,
        "image: a 8x8 image makes no picture: its sides must be at least 16 pixels (the "
        "model's size multiple); send a larger image",
    ):
        parse("img2img", {"image": tiny}, FACTS)
    with raises(
        RequestError,
        "image: a 256x256 image (65536 pixels) is larger than the 16384 pixels this model "
        "makes at most; send a smaller image",
    ):
        parse("img2img", {"image": png_bytes(256, 256)}, FACTS)
    # Formats PIL reads but a request has no use for are not tried at all.
    gif = io.BytesIO()
    Image.new("RGB", (16, 16)).save(gif, format="GIF")
    with pytest.raises(RequestError, match=r"^image: \d+ bytes that are not a PNG, JPEG or WebP file"):
        parse("img2img", {"image": gif.getvalue()}, FACTS)


def test_a_command_line_path_that_cannot_be_read(tmp_path: Path) -> None:
    with raises(
        RequestError,
        f"image: cannot read {tmp_path / 'missing.png'} (No such file or directory); give a PNG or JPEG file",
    ):
        parse("img2img", {"image": tmp_path / "missing.png"}, FACTS)


# ---------------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"{not json",
            "body: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            '(char 1)); send an object such as {"prompt": "a cat"}',
        ),
        (
            b'{"guidance": NaN}',
            'body: not valid JSON (NaN is not a JSON number); send an object such as {"prompt": "a cat"}',
        ),
        (
            b'{"guidance": Infinity}',
            'body: not valid JSON (Infinity is not a JSON number); send an object such as {"prompt": "a cat"}',
        ),
        (
            b"[" * 100_000 + b"]" * 100_000,
            'body: not valid JSON (nested too deep); send a flat object such as {"prompt": "a cat"}',
        ),
        (b"[1, 2]", "body: expected a JSON object, got [1, 2] (list)"),
    ],
    ids=["not-json", "nan", "infinity", "deep", "list"],
)
def test_bodies_that_are_not_a_json_object(raw: bytes, message: str) -> None:
    with raises(BodyError, message) as caught:
        json_body(raw, Limits())
    assert caught.value.status == 400


def test_a_number_of_thousands_of_digits_is_not_parsed() -> None:
    with pytest.raises(BodyError, match=r"^body: not valid JSON \(Exceeds the limit \(4300 digits\)"):
        json_body(b'{"seed": ' + b"9" * 5000 + b"}", Limits())


def test_a_body_too_large_is_413() -> None:
    limits = Limits(max_json_bytes=100)
    with raises(BodyError, "body: 101 bytes, more than the 100 taken") as caught:
        json_body(b" " * 101, limits)
    assert caught.value.status == 413
    # 1e400 is valid JSON for a float; it parses as infinity, which the field then refuses.
    assert json_body(json.dumps({"guidance": 1}).encode().replace(b"1", b"1e400"), Limits()) == {
        "guidance": float("inf")
    }
    with raises(RequestError, "guidance: must be a finite number, got inf"):
        parse("txt2img", json_body(b'{"guidance": 1e400}', Limits()), FACTS)
