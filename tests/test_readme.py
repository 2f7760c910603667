"""The README as a user copies it: every Python block runs on the toy world (small sizes substituted where it
names Stable Diffusion or real data), and every command line is accounted for: run as written on the toy
world (with flags appended that only make it smaller), run with --dry-run where it needs the hub, or skipped
with the reason. A README line this file does not know fails the test, so the README cannot drift."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import numpy as np
import pytest

from tests.helpers import CLI, ENV, REPO

README = (REPO / "README.md").read_text()
SMALL_BUILD = ["--max-steps", "1", "--learn-batch-size", "2", "--images-per-class", "4", "--shard-size", "6",
               "--steps", "2", "--batch-size", "12", "--no-progress"]  # fmt: skip
SMALL_GENERATE = ["--images-per-class", "4", "--shard-size", "6", "--steps", "2", "--batch-size", "12", "--no-progress"]
FEWSHOT = ["--shots", "0,2", "--trials", "1", "--model", "resnet18", "--model-kwargs",
           '{"channels": [8, 8, 16, 16], "stem_width": 8}', "--image-size", "16", "--steps", "2", "--no-progress"]  # fmt: skip
# every command line of the README's bash blocks → how the test runs it: ("run", flags appended), ("dry-run", []),
# or ("skip", why)
BUCKET = "augment-test"  # tests/conftest.py's s3 endpoint
COMMANDS = {
    "bash .ci/setup && .venv/bin/augment build --preset toy --labels manifests/fashion-mnist.txt --out runs/toy": ("run", SMALL_BUILD),
    ".venv/bin/python -m pytest -q -p no:cacheprovider": ("skip", "the test suite itself"),
    "augment build --preset sd14-cub --labels manifests/cub200.txt --out runs/cub": ("dry-run", []),
    "augment build --preset sd14-imagenet --labels manifests/imagenet1k.txt --out runs/in1k": ("dry-run", []),
    "augment build --preset sd21-base --labels my_classes.txt --guide ckpt:runs/my-guide --out runs/mine": ("run-toy", SMALL_BUILD),
    "augment build --preset sdxl-base --labels manifests/imagenet1k.txt --out runs/sdxl": ("dry-run", []),
    "torchrun --standalone --nproc-per-node 8 -m augment.cli build --preset sd14-cub --labels manifests/cub200.txt --out runs/cub": ("skip", "8 GPUs; torchrun is tested in test_resume and test_devices"),
    "srun --ntasks-per-node 8 --gpus-per-node 8 augment build --preset sd14-cub --labels manifests/cub200.txt --out runs/cub": ("skip", "Slurm; its variables are tested in test_devices"),
    'sbatch --array=0-7 --gpus 1 --wrap "augment build --preset sd14-cub --labels manifests/cub200.txt --out runs/cub"': ("skip", "Slurm; a Slurm array's variables are tested in test_devices"),
    "ls my_photos": ("skip", "a listing"),
    "ls my_photos > my_classes.txt": ("ls", []),
    "downstream train --dataset imagefolder:my_photos --labels my_classes.txt --save-classifier runs/my-guide": ("run", ["--model", "resnet18", "--model-kwargs", '{"channels": [8, 8, 16, 16], "stem_width": 8}', "--no-pretrained", "--image-size", "32", "--steps", "2", "--no-progress"]),
    "augment build --preset sd21-base --labels my_classes.txt --guide clip:openai/clip-vit-large-patch14 --out runs/mine-clip": ("dry-run", []),
    "augment adapt --preset sd21-base --labels my_classes.txt --dataset imagefolder:my_photos --shots 4 --out runs/lora": ("run-toy", ["--max-steps", "2", "--no-progress"]),
    "augment build --preset sd21-base --labels my_classes.txt --guide ckpt:runs/my-guide --lora runs/lora --out runs/mine-lora": ("run-toy", SMALL_BUILD),
    "augment score --shards runs/toy --preset toy --reference fashion-mnist --reference-limit 2000 --out runs/eval-toy.json": ("run", ["--reference-limit", "20", "--no-progress"]),
    "augment generate --preset toy --labels manifests/fashion-mnist.txt --no-tokens --out runs/toy-plain": ("run", SMALL_GENERATE),
    "augment generate --preset toy --labels manifests/fashion-mnist.txt --tokens runs/toy --refine date --refine-step-size 1 --out runs/toy-date": ("run", SMALL_GENERATE),
    "downstream fewshot --dataset fashion-mnist --labels manifests/fashion-mnist.txt --synthetic plain=runs/toy-plain --synthetic tokens=runs/toy --synthetic kshot=learn:toy --shots 0,3,9,15 --trials 3 --steps 300 --out runs/fewshot": ("run", FEWSHOT),
    "downstream fewshot --dataset cub:/data/CUB_200_2011 --labels manifests/cub200.txt --synthetic tokens=runs/cub --shots 0,3,9,15 --trials 3 --out runs/fewshot-cub": ("skip", "CUB-200 is not on this machine"),
    "pip install 'augment[cluster]'": ("skip", "the test environment has the extras (augment[test] includes them)"),
    "augment build --preset toy --labels manifests/fashion-mnist.txt --out runs/toy-ray --engine ray": ("ray-local", SMALL_BUILD),
    "ray start --head --port 6379": ("skip", "a cluster's head node; the tests start one on 127.0.0.1 (augment.testing.ray_cluster)"),
    "augment build --preset sd14-cub --labels manifests/cub200.txt --out s3://bucket/cub --engine ray --ray-address HEAD:6379": ("skip", "GPUs; --engine ray with an address is tested in test_ray on a local cluster"),
    "augment build --preset toy --labels manifests/fashion-mnist.txt --out s3://bucket/toy": ("run", SMALL_BUILD),
    "augment verify s3://bucket/toy": ("run", []),
}  # fmt: skip


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README, flags=re.S)


def command_lines() -> list[str]:
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def test_every_readme_command_is_accounted_for():
    assert sorted(set(command_lines())) == sorted(COMMANDS), "update tests/test_readme.py with the README"
    assert "{{" not in README and "}}" not in README  # no placeholder left


@pytest.fixture(scope="module")
def world(tmp_path_factory, labels3):
    """The directories the README names, on the toy world: runs/ under a temporary directory, my_photos with
    a few Fashion-MNIST test images per class, a small config for learn:toy."""
    from PIL import Image

    from augment.toy.data import load

    root = tmp_path_factory.mktemp("readme")
    (root / "runs").mkdir()
    images, labels = load("test")
    photos = root / "my_photos"
    for c, name in enumerate(["t-shirt", "trouser", "pullover"]):
        (photos / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:4]):
            Image.fromarray(images[i]).convert("RGB").save(photos / name / f"{k}.png")
    (root / "small.yaml").write_text(
        "learn:\n  max_steps: 1\n  batch_size: 1\n  num_inference_steps: 2\n"
        "generate:\n  images_per_class: 2\n  shard_size: 6\n  num_inference_steps: 2\n  batch_size: 6\n"
    )
    return root


def substitute(argv: list[str], world, labels3) -> list[str]:
    """README paths → the test's: runs/ and my_photos in the world; the paper's label sets → 3 toy classes;
    s3://bucket/ → the test endpoint's bucket (tests/conftest.py's s3)."""
    out = []
    for a in argv:
        a = (
            a.replace("s3://bucket/", f"s3://{BUCKET}/readme-")
            .replace("runs/", f"{world}/runs/")
            .replace("my_photos", str(world / "my_photos"))
        )
        a = a.replace("my_classes.txt", str(world / "my_classes.txt")).replace(
            "learn:toy", f"learn:toy+{world}/small.yaml"
        )
        if a == "manifests/fashion-mnist.txt":
            a = str(labels3)
        out.append(a)
    return out


def run_command(line: str, world, labels3) -> None:
    from augment.cli import main as augment_main
    from downstream.cli import main as downstream_main

    action, extra = COMMANDS[line]
    if action == "skip":
        return
    if action == "ls":
        (world / "my_classes.txt").write_text("".join(f"{p.name}\n" for p in sorted((world / "my_photos").iterdir())))
        return
    argv = shlex.split(line.split("&&")[-1].strip())
    argv = substitute(argv, world, labels3)
    program, args = argv[0].rsplit("/", 1)[-1], argv[1:]
    if action == "ray-local":  # as its own process: Ray starts a local cluster from it (HOME: where it puts its token)
        home = world / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in ENV.items() if not k.startswith("RAY_")}
        r = subprocess.run([*CLI, *args, *extra], cwd=REPO, env={**env, "HOME": str(home)}, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        return
    if action == "dry-run":
        args = [*args, "--dry-run", "--no-progress"]
    if action == "run-toy":  # the SD preset's command on the toy world's generator, at the toy's sizes
        args[args.index("--preset") + 1] = "toy"
    main = augment_main if program == "augment" else downstream_main
    assert main([*args, *extra]) == 0, line


def test_the_readme_commands_run_in_order(world, labels3, s3):
    """In the README's order: the toy build, the SD presets' dry runs, a guide from a folder of images and a
    build with it, scoring, the plain baseline, the few-shot grid with a k-shot row."""
    lines = command_lines()
    for i, line in enumerate(lines):
        if line not in lines[i + 1 :]:  # a line the README repeats runs where it stands last (after its inputs)
            run_command(line, world, labels3)
    assert (world / "runs" / "toy" / "_info.json").is_file() and (world / "runs" / "mine" / "_info.json").is_file()
    assert (world / "runs" / "my-guide" / "config.json").is_file() and (world / "runs" / "eval-toy.json").is_file()
    assert "| kshot |" in (world / "runs" / "fewshot" / "results.md").read_text()
    assert "readme-toy/_info.json" in s3.objects("")  # the object-storage build, then its verify
    ray = json.loads((world / "runs" / "toy-ray" / "manifest.json").read_text())
    assert ray["generate"]["engine"] == "ray" and (world / "runs" / "toy-ray" / "_info.json").is_file()
    date = json.loads((world / "runs" / "toy-date" / "manifest.json").read_text())
    assert date["generate"]["config"]["generate"]["refine"] == "date"


def test_the_readme_python_blocks_run(world, labels3):
    """Each Python block as written, with the toy world substituted where it names Stable Diffusion or data
    that is not here; then what it built is used the way a training loop would use it."""
    toy = world / "runs" / "toy"
    if not (toy / "_info.json").is_file():
        run_command(next(line for line in COMMANDS if "--preset toy --labels" in line), world, labels3)
    _, api, loading, mixing = blocks("python")  # the first: test_the_readme_sdxl_block_loads_learned_tokens
    api = (
        api.replace('"sd14-cub"', '"toy"')
        .replace("cfg.generate.images_per_class = 500", "cfg.generate.images_per_class = 4; cfg.learn.max_steps = 1")
        .replace('"manifests/cub200.txt"', repr(str(labels3)))
        .replace('"runs/cub"', repr(str(world / "runs" / "api")))
        .replace(
            '"ckpt:runs/cub-guide"', '"ckpt:" + str(augment.config.PRESETS_DIR.parent / "toy" / "weights" / "heldout")'
        )
    )
    namespace: dict = {}
    exec(compile(api, "README.md (From Python)", "exec"), namespace)
    assert namespace["report"]["images"] == 12 and "learned 3 token(s)" in namespace["result"].summary()
    loading = loading.replace("OUT", str(toy)).replace("RandomResizedCrop(224", "RandomResizedCrop(32")
    namespace = {}
    exec(compile(loading, "README.md (Loading the shards)", "exec"), namespace)
    images, cls = next(iter(namespace["loader"]))
    assert images.shape[1:] == (3, 32, 32) and len(set(cls.tolist())) == 3
    assert {"png", "cls", "json"} <= set(next(iter(namespace["hf"]))) and len(next(iter(namespace["tm"]))) == 2
    from augment.toy.data import load

    real_images, real_labels = load("test")
    namespace["my_real_images"] = [
        (__import__("PIL.Image").Image.fromarray(real_images[i]).convert("RGB"), [0, 2, 4].index(int(real_labels[i])))
        for i in np.flatnonzero(np.isin(real_labels, [0, 2, 4]))[:6]
    ]
    exec(compile(mixing.replace("OUT", str(toy)), "README.md (mixing)", "exec"), namespace)
    batch = next(iter(namespace["mixed"]))
    assert batch[0].shape[0] == 64


def test_the_readme_sdxl_block_loads_learned_tokens(tmp_path, tokenizer_dir):
    """The SDXL block as written, on a tiny StableDiffusionXLPipeline saved as a directory (in place of the hub
    id) with tokens our learner wrote: both rows of every class load, and the pipeline draws with them."""
    import torch

    from augment.labels import read_label_set
    from augment.learn.learner import TokenLearner
    from tests.test_tokens import learn_config
    from tests.tiny import COLOURS, colour_guide, tiny_sdxl_pipeline

    sdxl = blocks("python")[0]
    pipe = tiny_sdxl_pipeline(tokenizer_dir)
    pipe.save_pretrained(str(tmp_path / "sdxl-dir"))
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    labels = read_label_set(tmp_path / "colours.txt")
    TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=1), tmp_path / "runs" / "sdxl").run()
    code = (
        sdxl.replace('"stabilityai/stable-diffusion-xl-base-1.0"', repr(str(tmp_path / "sdxl-dir")))
        .replace('"runs/sdxl/tokens"', repr(str(tmp_path / "runs" / "sdxl" / "tokens")))
        .replace("torch.bfloat16", "torch.float32")
    )
    namespace: dict = {}
    exec(compile(code, "README.md (SDXL)", "exec"), namespace)
    loaded = namespace["pipe"]
    for c in labels.classes:
        token = labels.token(c)
        assert token in loaded.tokenizer.get_vocab() and token in loaded.tokenizer_2.get_vocab()
        row = loaded.text_encoder_2.get_input_embeddings().weight[loaded.tokenizer_2.convert_tokens_to_ids(token)]
        ours = pipe.text_encoder_2.get_input_embeddings().weight[pipe.tokenizer_2.convert_tokens_to_ids(token)]
        torch.testing.assert_close(row, ours)
    assert namespace["image"].size == (16, 16)
