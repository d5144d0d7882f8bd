"""The task table: requests from the HTTP body, and batched requests that keep their own seeds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from examples.stable_diffusion import defaults
from examples.stable_diffusion.tasks import TASKS, Img2ImgRequest, InpaintRequest, Models, RequestError, Txt2ImgRequest

from .sd_servers import b64, cli_image, sample_images, tiny_cache_dir


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


# ---------------------------------------------------------------------- img2img and inpaint


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sample_images(tmp_path_factory.mktemp("pictures"))


def test_image_task_defaults_are_the_clis(pictures: tuple[Path, Path]) -> None:
    from examples.stable_diffusion.img2img import build_parser as img2img_parser
    from examples.stable_diffusion.inpaint import build_parser as inpaint_parser

    image, mask = pictures
    cli = img2img_parser().parse_args(["--image", "x.png"])
    request = Img2ImgRequest.from_json({"image": b64(image)})
    assert (request.strength, request.steps, request.guidance, request.seed, request.scheduler, request.prompt) == (
        *(cli.strength, cli.steps, cli.guidance, cli.seed, cli.scheduler, cli.prompt),
    )
    cli = inpaint_parser().parse_args(["--image", "x.png", "--mask", "m.png"])
    inpaint = InpaintRequest.from_json({"image": b64(image), "mask_image": b64(mask)})
    assert (inpaint.strength, inpaint.steps, inpaint.seed, inpaint.width, inpaint.height) == (
        *(cli.strength, cli.steps, cli.seed, cli.width, cli.height),
    )
    assert (inpaint.image.mode, inpaint.mask_image.mode, inpaint.image.size) == ("RGB", "L", (64, 64))


@pytest.mark.parametrize(
    ("task", "body", "message"),
    [
        ("img2img", {}, "image: missing; send the starting image as a base64-encoded PNG"),
        ("img2img", {"image": 3}, "image: expected a base64-encoded PNG as a string, got int"),
        ("img2img", {"image": "not base64!"}, "image: not valid base64 (Only base64 data is allowed)"),
        ("img2img", {"image": "aGVsbG8="}, "image: base64 of 5 bytes that are not an image"),
        ("img2img", {"image": "PNG", "strength": 1.5}, "strength: must be between 0 and 1, got 1.5"),
        ("img2img", {"image": "PNG", "strength": 0.02}, "strength: 0.02 of 20 steps runs no step; raise strength"),
        ("img2img", {"image": "PNG", "strength": "lots"}, 'strength: expected int or float, got "lots" (str)'),
        (
            "img2img",
            {"image": "PNG", "width": 64},
            "width: unknown field; the fields are prompt, negative_prompt, image, strength",
        ),
        ("inpaint", {"image": "PNG"}, "mask_image: missing; send the mask as a base64-encoded PNG"),
        ("inpaint", {"image": "PNG", "mask_image": "@@"}, "mask_image: not valid base64"),
        ("inpaint", {"image": "PNG", "mask_image": "PNG", "height": 12}, "height: must be a multiple of 8, got 12"),
    ],
)
def test_bad_image_requests_name_the_field(
    pictures: tuple[Path, Path], task: str, body: dict[str, object], message: str
) -> None:
    png = b64(pictures[0])
    body = {key: png if value == "PNG" else value for key, value in body.items()}
    with pytest.raises(RequestError, match="^" + re.escape(message)) as caught:
        TASKS[task].request.from_json(body, allow=TASKS[task].http_fields)
    assert caught.value.field == message.split(":", maxsplit=1)[0]


def test_image_requests_run_alone(pictures: tuple[Path, Path]) -> None:
    # One generator draws the VAE sample, the noise and the step noise: shared, it would change the pictures.
    png, mask = b64(pictures[0]), b64(pictures[1])
    a, b = (Img2ImgRequest.from_json({"image": png}) for _ in range(2))
    assert a.batch_key() != b.batch_key()
    c, d = (InpaintRequest.from_json({"image": png, "mask_image": mask}) for _ in range(2))
    assert c.batch_key() != d.batch_key()


@pytest.mark.slow
def test_img2img_is_the_cli(models: Models, cache_dir: Path, pictures: tuple[Path, Path], tmp_path: Path) -> None:
    image = pictures[0]
    bodies = [
        {"prompt": "a watercolor", "image": b64(image), "steps": 4, "seed": 3},
        {"prompt": "an oil painting", "image": b64(image), "steps": 5, "seed": 8, "strength": 0.5, "guidance": 4.0},
    ]
    # Two requests in one call: each still gets its own single run's picture.
    results = models.run("img2img", [Img2ImgRequest.from_json(body) for body in bodies])
    for index, (body, images) in enumerate(zip(bodies, results, strict=True)):
        args = ["--prompt", str(body["prompt"]), "--image", str(image), "--steps", str(body["steps"])]
        args += ["--seed", str(body["seed"]), "--strength", str(body.get("strength", 0.8))]
        args += ["--guidance", str(body.get("guidance", defaults.GUIDANCE))]
        expected = cli_image(cache_dir, tmp_path / f"cli-{index}.png", *args, command="img2img")
        (got,) = images
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.slow
def test_inpaint_is_the_cli(models: Models, cache_dir: Path, pictures: tuple[Path, Path], tmp_path: Path) -> None:
    image, mask = pictures
    body = {"prompt": "a red door", "image": b64(image), "mask_image": b64(mask), "steps": 4, "seed": 5}
    ((got,),) = models.run("inpaint", [InpaintRequest.from_json(body)])
    args = ("--prompt", "a red door", "--image", str(image), "--mask", str(mask), "--steps", "4", "--seed", "5")
    np.testing.assert_array_equal(np.asarray(got), cli_image(cache_dir, tmp_path / "cli.png", *args, command="inpaint"))
    # Below full strength the image's latents start the run; another size resizes image and mask.
    request = InpaintRequest.from_json({**body, "strength": 0.6, "width": 96})
    ((got,),) = models.run("inpaint", [request])
    expected = cli_image(
        cache_dir, tmp_path / "cli-2.png", *args, "--strength", "0.6", "--width", "96", command="inpaint"
    )
    assert expected.shape == (64, 96, 3)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_a_given_folder_runs_the_tasks_it_can(cache_dir: Path) -> None:
    from examples.stable_diffusion.cache import ensure_tiny_model

    sd, inpaint = (Models(ensure_tiny_model(cache_dir, kind=kind), "cpu") for kind in ("sd", "inpaint"))
    assert sd.tasks() == ["txt2img", "img2img"]
    assert inpaint.tasks() == ["inpaint"]
    reason = sd.supports("inpaint")
    assert reason is not None and reason.endswith("does text-to-image and image-to-image, not inpainting"), reason
    assert inpaint.model_dir_for("inpaint") == inpaint.model_dir
