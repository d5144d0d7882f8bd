"""The task table: requests from the HTTP body, and batched requests that keep their own seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from examples.stable_diffusion import defaults
from examples.stable_diffusion.tasks import Models, RequestError, Txt2ImgRequest

from .sd_servers import cli_image, tiny_cache_dir


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def models(cache_dir: Path) -> Models:
    return Models(None, "cpu", cache_dir)


def test_defaults_are_the_clis() -> None:
    from examples.stable_diffusion.txt2img import build_parser

    cli = build_parser().parse_args([])
    request = Txt2ImgRequest()
    assert (request.prompt, request.steps, request.guidance, request.seed, request.scheduler) == (
        cli.prompt,
        cli.steps,
        cli.guidance,
        cli.seed,
        cli.scheduler,
    )
    assert (request.width, request.height, cli.width, cli.height) == (None, None, None, None)
    assert defaults.default_size(tiny=True) == 64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("text", "body: expected a JSON object, got str"),
        ({"seed": -1}, "seed: must be at least 0, got -1"),
        ({"steps": True}, "steps: expected int, got true (bool)"),
        ({"guidance": "high"}, 'guidance: expected int or float, got "high" (str)'),
        ({"negative_prompt": 3}, "negative_prompt: expected str, got 3 (int)"),
        ({"height": 20}, "height: must be a multiple of 8, got 20; try 16"),
        (
            {"scheduler": "lms"},
            "scheduler: expected one of pndm, ddim, euler, euler-ancestral, dpm++, unipc, got 'lms'",
        ),
        ({"prompt": "x", "seeds": 1}, "seeds: unknown field; the fields are prompt, negative_prompt, steps, guidance"),
    ],
)
def test_bad_requests_name_the_field(body: object, message: str) -> None:
    with pytest.raises(RequestError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        Txt2ImgRequest.from_json(body)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pndm", "euler"])
def test_batched_requests_keep_their_seeds(models: Models, scheduler: str) -> None:
    requests = [
        Txt2ImgRequest(prompt="a red cube", seed=1, steps=4, scheduler=scheduler),
        Txt2ImgRequest(prompt="a lighthouse", negative_prompt="fog", seed=2, steps=4, scheduler=scheduler, batch=2),
        Txt2ImgRequest(prompt="a red cube", seed=3, steps=4, scheduler=scheduler),
    ]
    assert len({r.batch_key() for r in requests}) == 1
    batched = models.run("txt2img", requests)
    assert [len(images) for images in batched] == [1, 2, 1]
    for request, images in zip(requests, batched, strict=True):
        (alone,) = models.run("txt2img", [request])
        for got, expected in zip(images, alone, strict=True):
            diff = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max()
            assert diff <= 2, (request, diff)


@pytest.mark.slow
def test_alone_is_the_cli(models: Models, cache_dir: Path, tmp_path: Path) -> None:
    (images,) = models.run("txt2img", [Txt2ImgRequest(prompt="a cat", steps=3, seed=4, width=96)])
    expected = cli_image(
        cache_dir, tmp_path / "cli.png", "--prompt", "a cat", "--steps", "3", "--seed", "4", "--width", "96"
    )
    np.testing.assert_array_equal(np.asarray(images[0]), expected)


def test_stochastic_schedulers_are_not_batched() -> None:
    # Their steps draw noise from the call's one generator: a shared call would change each picture.
    a, b = (Txt2ImgRequest(seed=s, scheduler="euler-ancestral") for s in (1, 2))
    assert a.batch_key() != b.batch_key()
    c, d = (Txt2ImgRequest(seed=s, scheduler="ddim") for s in (1, 2))
    assert c.batch_key() == d.batch_key()
