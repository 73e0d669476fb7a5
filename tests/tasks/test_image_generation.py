import logging

import numpy as np
import pytest
import torch
from PIL import Image

import hfpipes
from hfpipes.errors import InvalidInputError, ModelLoadError
from hfpipes.tasks.image_generation import ClassLabels, number_words

STEPS = {"num_inference_steps": 2}


def pixels(image):
    return np.asarray(image)


def same(a, b):
    return a.size == b.size and a.mode == b.mode and np.array_equal(pixels(a), pixels(b))


def generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: handing work between threads costs more than the work (30x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd(tiny_stable_diffusion):
    with hfpipes.load("text-to-image", model=tiny_stable_diffusion, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def plain_sd(tiny_stable_diffusion):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_stable_diffusion)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def ddpm(tiny_ddpm):
    with hfpipes.load("unconditional-image-generation", model=tiny_ddpm, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def digits(tiny_class_ddpm):
    with hfpipes.load("image-generation", model=tiny_class_ddpm, device="cpu") as loaded:
        yield loaded


def reference_class_loop(model_dir, class_id, seed, steps=2):
    """The class-conditional loop written out with plain diffusers objects."""
    from diffusers import DDPMPipeline

    pipeline = DDPMPipeline.from_pretrained(model_dir)
    unet, scheduler = pipeline.unet, pipeline.scheduler
    gen = generator(seed)
    with torch.no_grad():
        sample = torch.randn((1, 1, 16, 16), generator=gen)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            output = unet(sample, t, class_labels=torch.tensor([class_id])).sample
            sample = scheduler.step(output, t, sample, generator=gen).prev_sample
    return pipeline.numpy_to_pil((sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())[0]


# ------------------------------------------------------------------------------ equivalence with diffusers


def test_text_to_image_is_pixel_identical_to_plain_diffusers(sd, plain_sd):
    ours = sd("a red cube", seed=3, **STEPS)
    theirs = plain_sd("a red cube", generator=generator(3), **STEPS).images[0]
    assert set(ours) == {"image", "seed"} and ours["seed"] == 3
    assert ours["image"].mode == "RGB" and ours["image"].size == (32, 32)
    assert same(ours["image"], theirs)

    options = {"negative_prompt": "blurry", "guidance_scale": 3.0, "height": 24, "width": 40}
    ours = sd("a red cube", seed=4, **STEPS, **options)["image"]
    theirs = plain_sd("a red cube", generator=generator(4), **STEPS, **options).images[0]
    assert ours.size == (40, 24) and same(ours, theirs)


def test_unconditional_ddpm_is_pixel_identical_to_plain_diffusers(ddpm, tiny_ddpm):
    from diffusers import DDPMPipeline

    plain = DDPMPipeline.from_pretrained(tiny_ddpm)
    plain.set_progress_bar_config(disable=True)
    theirs = plain(generator=generator(11), **STEPS).images[0]
    ours = ddpm("", seed=11, **STEPS)
    assert ours["image"].mode == "RGB" and same(ours["image"], theirs)
    # An explicit default size takes the same path.
    assert same(ddpm("", seed=11, height=16, width=16, **STEPS)["image"], theirs)


def test_image_to_image_folder_runs_as_text_to_image(tmp_path, sd):
    from tests.fixtures.image_generation import build_stable_diffusion

    folder = build_stable_diffusion(tmp_path / "img2img", pipeline_class="StableDiffusionImg2ImgPipeline")
    with hfpipes.load("text-to-image", model=str(folder), device="cpu") as converted:
        assert type(converted.model).__name__ == "StableDiffusionPipeline"
        assert same(converted("a tree", seed=1, **STEPS)["image"], sd("a tree", seed=1, **STEPS)["image"])


# ----------------------------------------------------------------------------------------- seeds, images


def test_same_seed_same_image_different_seed_different_image(sd, digits):
    a, b, c = (sd("a boat", seed=s, **STEPS)["image"] for s in (5, 5, 6))
    assert same(a, b) and not same(a, c)
    a, b = (digits("7", seed=s, **STEPS)["image"] for s in (5, 6))
    assert not same(a, b)


def test_num_images_records_seeds_and_any_image_regenerates_alone(digits):
    results = digits(["seven", "3"], num_images=3, seed=40, **STEPS)
    assert [[r["seed"] for r in group] for group in results] == [[40, 41, 42], [40, 41, 42]]
    assert all(isinstance(r["image"], Image.Image) for group in results for r in group)
    alone = digits("seven", seed=42, **STEPS)
    assert isinstance(alone, dict) and same(alone["image"], results[0][2]["image"])
    assert not same(results[0][0]["image"], results[0][1]["image"])


def test_without_a_seed_each_prompt_records_a_seed_that_reproduces_it(digits):
    torch.manual_seed(0)
    first = digits(["7", "7"], **STEPS)
    assert first[0]["seed"] != first[1]["seed"]
    again = digits("7", seed=first[1]["seed"], **STEPS)
    assert same(again["image"], first[1]["image"])


def test_batched_text_to_image_matches_one_by_one(sd):
    prompts = ["a cat", "a dog on a hill at night", "x", "blue"]
    batched = sd(prompts, seed=0, batch_size=4, **STEPS)
    for prompt, result in zip(prompts, batched, strict=True):
        alone = sd(prompt, seed=0, **STEPS)["image"]
        difference = np.abs(pixels(alone).astype(int) - pixels(result["image"]).astype(int))
        # Same noise; batched float kernels may differ in the last bits, moving a rare pixel by one level.
        assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def test_save_to_writes_pngs_named_by_input_and_seed_without_overwriting(digits, tmp_path):
    out = tmp_path / "images"
    results = digits(["7", "zero"], seed=3, num_images=2, save_to=out, **STEPS)
    paths = [r["path"] for group in results for r in group]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["0-seed3.png", "0-seed4.png", "1-seed3.png", "1-seed4.png"]
    for group in results:
        for result in group:
            with Image.open(result["path"]) as saved:
                assert saved.format == "PNG" and same(saved, result["image"])
    again = digits("nought", seed=3, save_to=str(out), **STEPS)
    assert again["path"].endswith("0-seed3-1.png")
    assert len(list(out.iterdir())) == 5


def test_scheduler_swap_matches_diffusers_and_is_for_one_call_only(sd, plain_sd):
    from diffusers import EulerDiscreteScheduler

    before = sd("a hat", seed=2, **STEPS)["image"]
    swapped = sd("a hat", seed=2, scheduler="EulerDiscreteScheduler", **STEPS)["image"]
    original = plain_sd.scheduler
    plain_sd.scheduler = EulerDiscreteScheduler.from_config(original.config)
    try:
        theirs = plain_sd("a hat", generator=generator(2), **STEPS).images[0]
    finally:
        plain_sd.scheduler = original
    assert same(swapped, theirs) and not same(swapped, before)
    assert type(sd.model.scheduler).__name__ == "DDIMScheduler"
    assert same(sd("a hat", seed=2, **STEPS)["image"], before)


def test_unknown_scheduler_lists_valid_ones(sd):
    with pytest.raises(
        InvalidInputError,
        match=r"scheduler: .*'DDIMSchedular'.*Did you mean 'DDIMScheduler'.*compatible with: .*Scheduler",
    ):
        sd("a hat", scheduler="DDIMSchedular")
    with pytest.raises(InvalidInputError, match="scheduler"):
        sd("a hat", scheduler="UNet2DModel")


# ------------------------------------------------------------------------------------ class-conditional


@pytest.mark.parametrize("prompt", ["7", "digit 7", "a handwritten seven", "A HANDWRITTEN SEVEN!"])
def test_prompt_picks_the_class_it_names(digits, tiny_class_ddpm, prompt):
    result = digits(prompt, seed=8, **STEPS)
    assert result["label"] == "7"
    assert result["image"].mode == "L" and result["image"].size == (16, 16)
    assert same(result["image"], reference_class_loop(tiny_class_ddpm, 7, seed=8))


def test_class_label_option_by_id_or_name(digits, tiny_class_ddpm):
    by_prompt = digits("digit 3", seed=8, **STEPS)["image"]
    assert same(by_prompt, reference_class_loop(tiny_class_ddpm, 3, seed=8))
    assert not same(by_prompt, digits("7", seed=8, **STEPS)["image"])
    for label in (3, "3", "three"):
        result = digits("", class_label=label, seed=8, **STEPS)
        assert result["label"] == "3" and same(result["image"], by_prompt)
    assert digits("nought", seed=8, **STEPS)["label"] == "0"  # an alias from class_labels.json


def test_prompt_naming_no_class_or_two_is_refused_listing_the_classes(digits):
    with pytest.raises(
        InvalidInputError, match=r"input 1: the prompt 'a cat' names none.*class_label=.*Classes: 0, 1, 2"
    ):
        digits(["7", "a cat"], **STEPS)
    with pytest.raises(InvalidInputError, match=r"input 0: .*names several classes \(7, 8\)"):
        digits("7 or eight", **STEPS)
    with pytest.raises(InvalidInputError, match=r"input 0: .*names none"):
        digits("seventeen 77", **STEPS)  # whole words only
    with pytest.raises(InvalidInputError, match=r"class_label: expected a class id from 0 to 9.*got int 10"):
        digits("", class_label=10)


def test_class_labels_matching_rules():
    labels = ClassLabels([str(i) for i in range(30)] + [["golden retriever", "goldie"]])
    assert labels.find("twenty-one") == [21] and labels.find("twenty one") == [21]
    assert labels.find("a Golden  Retriever") == [30] and labels.find("goldie and 2") == [30, 2]
    assert labels.find("7th") == [] and labels.lookup("TWENTY") == 20
    assert number_words("07") == [] and number_words("100") == [] and number_words("40") == ["forty"]
    with pytest.raises(ValueError, match="two classes"):
        ClassLabels(["1", "one"])


def test_class_conditional_model_saves_as_a_ddpm_folder_plain_diffusers_loads(digits, tmp_path):
    from diffusers import DDPMPipeline

    saved = digits.save_pretrained(tmp_path / "copy")
    names = {p.name for p in (tmp_path / "copy").iterdir()}
    assert {"model_index.json", "unet", "scheduler", "class_labels.json"} <= names
    plain = DDPMPipeline.from_pretrained(saved)
    assert plain.unet.config.num_class_embeds == 10
    with hfpipes.load("image-generation", model=saved, device="cpu") as reloaded:
        assert reloaded.class_labels.entries == digits.class_labels.entries
        assert reloaded("nought", seed=1, **STEPS)["label"] == "0"


def test_class_labels_file_must_match_the_unet(tmp_path):
    from tests.fixtures.image_generation import build_ddpm

    folder = build_ddpm(tmp_path / "bad", channels=1, class_labels=["a", "b", "c"])
    (folder / "class_labels.json").write_text('["a", "b"]')
    with pytest.raises(ModelLoadError, match="names 2 classes but the UNet has num_class_embeds=3"):
        hfpipes.load("image-generation", model=str(folder), device="cpu")


# ------------------------------------------------------------------------------------------ unconditional


def test_unconditional_ignores_prompts_with_one_warning(ddpm, caplog):
    ddpm._warned_about_prompt = False
    with caplog.at_level(logging.WARNING, logger="hfpipes"):
        results = ddpm(["", "a cat", "a dog"], seed=0, **STEPS)
    assert caplog.text.count("prompts are ignored") == 1
    assert same(results[0]["image"], results[1]["image"]) and same(results[0]["image"], results[2]["image"])


def test_unconditional_pixel_unet_generates_other_sizes(ddpm):
    result = ddpm("", seed=0, height=32, width=16, **STEPS)
    assert result["image"].size == (16, 32)
    with pytest.raises(InvalidInputError, match=r"height: this model needs a multiple of 2 pixels, got 15"):
        ddpm("", height=15)


# ------------------------------------------------------------------------------------------ half precision


def test_float16_nan_images_are_redone_in_float32_with_a_warning(tiny_overflowing_ddpm, tmp_path, caplog):
    with hfpipes.load("image-generation", model=tiny_overflowing_ddpm, device="cpu", dtype="float16") as half:
        assert half.model.dtype == torch.float16
        with caplog.at_level(logging.WARNING, logger="hfpipes"):
            results = half(["", ""], seed=0, num_images=2, **STEPS)
        assert "4 image(s) came out NaN/inf or all black in float16" in caplog.text and "float32" in caplog.text
        assert half.model.dtype == torch.float16  # back to half precision afterwards
        # The redo runs the float16 weights upcast to float32: the same as a float32 load of a float16 copy.
        rounded = half.save_pretrained(tmp_path / "float16-weights")
    with hfpipes.load("image-generation", model=rounded, device="cpu", dtype="float32") as full:
        expected = full(["", ""], seed=0, num_images=2, **STEPS)
    for got, want in zip(sum(results, []), sum(expected, []), strict=True):
        assert got["seed"] == want["seed"] and same(got["image"], want["image"])
        assert pixels(got["image"]).any()


# ------------------------------------------------------------------------------------------- bad inputs


def test_bad_sizes_are_refused_naming_the_option(sd):
    with pytest.raises(InvalidInputError, match=r"height: this model needs a multiple of 8 pixels, got 30 \(try 24\)"):
        sd("a cat", height=30)
    with pytest.raises(InvalidInputError, match=r"width: expected an integer >= 1, got int -8"):
        sd("a cat", width=-8)
    with pytest.raises(InvalidInputError, match=r"height: expected an integer >= 1, got float 32.0"):
        sd("a cat", height=32.0)


def test_bad_prompts_and_options_are_refused(sd, ddpm, digits):
    assert sd([]) == [] and digits([]) == []
    with pytest.raises(InvalidInputError, match=r"input 0: expected a text \(str\), got NoneType"):
        sd(None)
    with pytest.raises(InvalidInputError, match=r"input 1: expected a prompt \(str, may be empty .*\), got int 42"):
        digits(["7", 42])
    with pytest.raises(InvalidInputError, match=r"input 0: expected a prompt .*got NoneType"):
        ddpm(None)
    with pytest.raises(InvalidInputError, match="input 1: expected a non-empty text"):
        sd(["a cat", ""])
    with pytest.raises(InvalidInputError, match="guidance_scale: only for text-to-image"):
        ddpm("", guidance_scale=2.0)
    with pytest.raises(InvalidInputError, match="class_label: only for class-conditional models"):
        sd("a cat", class_label=1)
    with pytest.raises(InvalidInputError, match="seed: expected an integer"):
        sd("a cat", seed=-1)
    with pytest.raises(InvalidInputError, match="num_images: expected an integer >= 1"):
        sd("a cat", num_images=0)
    with pytest.raises(InvalidInputError, match="negative_prompt: expected a text"):
        sd("a cat", negative_prompt=["x"])


def test_progress_true_shows_the_denoising_bar(digits, capsys):
    digits("7", seed=0, progress=True, **STEPS)
    assert "2/2" in capsys.readouterr().err
    digits("7", seed=0, **STEPS)
    assert "2/2" not in capsys.readouterr().err


def test_a_pixel_pipeline_loads_without_diffusers_auto_pipelines(tiny_class_ddpm):
    # diffusers' auto_pipeline module imports every pipeline it maps (and with them transformers' image processors,
    # which warn that torchvision is missing): only an image-to-image pipeline needs it.
    import subprocess
    import sys

    code = (
        "import sys, hfpipes\n"
        f"pipe = hfpipes.load('image-generation', model={tiny_class_ddpm!r}, device='cpu')\n"
        "print(pipe.kind, 'diffusers.pipelines.auto_pipeline' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["class-conditional", "False"], done.stdout
    assert "requires torchvision" not in done.stderr
