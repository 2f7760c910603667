import os

import pytest
import torch

torch.set_num_threads(1)
RESTORED: list[str] = []  # "test: what it left changed", shown at the end of the run


@pytest.fixture(autouse=True)
def isolated_globals(request):
    """What a test changes in the process's global state is put back after it, so that no test depends on
    which tests ran before it in the same process: the environment (check_hub switches a process offline for
    good; a job run in-process may set variables), torch's thread count and default dtype, huggingface_hub's
    offline switch. What was put back is listed at the end of the run."""
    import huggingface_hub.constants as hub_constants

    env, threads, dtype = _environ(), torch.get_num_threads(), torch.get_default_dtype()
    offline = hub_constants.HF_HUB_OFFLINE
    yield
    changed = []
    if _environ() != env:
        changed += sorted(k for k in set(env) | set(_environ()) if env.get(k) != os.environ.get(k))
        for k in set(_environ()) - set(env):
            del os.environ[k]
        os.environ.update(env)
    if torch.get_num_threads() != threads:
        changed.append(f"torch threads {torch.get_num_threads()}")
        torch.set_num_threads(threads)
    if torch.get_default_dtype() != dtype:
        changed.append(f"default dtype {torch.get_default_dtype()}")
        torch.set_default_dtype(dtype)
    if hub_constants.HF_HUB_OFFLINE != offline:
        changed.append("huggingface_hub offline switch")
        hub_constants.HF_HUB_OFFLINE = offline
    if changed:
        RESTORED.append(f"{request.node.nodeid}: {', '.join(changed)}")


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's own, set per phase


def pytest_terminal_summary(terminalreporter):
    if RESTORED:
        terminalreporter.write_line(f"global state put back after {len(RESTORED)} test(s):")
        for line in RESTORED:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from augment.toy.clip_tokenizer import write_clip_tokenizer_files

    return write_clip_tokenizer_files(tmp_path_factory.mktemp("clip-tokenizer"))


@pytest.fixture(scope="session")
def sd14_dir(tmp_path_factory):
    """Stable Diffusion v1.4's full architecture with random weights, saved once per session (fp16 on disk)."""
    from augment.testing import save_random_pipeline

    return save_random_pipeline("sd14", tmp_path_factory.mktemp("sd14") / "stable-diffusion-v1-4")


@pytest.fixture(scope="session")
def sd14_narrow_dir(tmp_path_factory):
    """SD-1.4's architecture at 1/16 of its widths (augment/testing/sd_configs/sd14-narrow.json), random
    weights: the same code paths in bf16 at a cost that a CPU without native bf16 can afford."""
    from augment.testing import save_random_pipeline

    return save_random_pipeline("sd14-narrow", tmp_path_factory.mktemp("sd14-narrow") / "sd14-narrow")


@pytest.fixture(scope="session")
def cub_guide_dir(tmp_path_factory):
    """A random classifier with vesteinn/vit-mae-cub's layout and labels, in a directory of that name."""
    from tests.full_size import save_vit_mae_cub

    return save_vit_mae_cub(tmp_path_factory.mktemp("guides") / "vit-mae-cub")


@pytest.fixture(scope="session")
def labels3(tmp_path_factory):
    """Three Fashion-MNIST classes for small toy builds."""
    path = tmp_path_factory.mktemp("labels") / "fm3.txt"
    path.write_text("0\tt-shirt\n2\tpullover\n4\tcoat\n")
    return path


@pytest.fixture(scope="session")
def one_process_build(labels3, tmp_path_factory):
    """tests.helpers.build_cmd with one class per learner step, run once in-process: the bytes that
    torchrun and Ray builds must reproduce."""
    from augment.cli import main
    from tests.helpers import build_cmd

    out = tmp_path_factory.mktemp("one") / "run"
    assert main(build_cmd(labels3, out, "--classes-per-step", "1")[3:]) == 0
    return out


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """A real local Ray cluster bound to 127.0.0.1 (augment.testing.ray_cluster), 2 CPUs; its workers reach the
    session's S3 endpoint through the standard AWS variables, as a cluster's nodes reach a bucket."""
    pytest.importorskip("ray")
    from augment.testing.ray_cluster import local_ray_cluster
    from tests.helpers import REPO

    env = {**s3.env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # its workers import this checkout
    with local_ray_cluster(num_cpus=2, env=env) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3():
    """A real S3 endpoint on 127.0.0.1 (augment.testing.s3) with one bucket; this process reaches it through the
    standard AWS variables, set for the session and restored afterwards."""
    from augment.testing.s3 import moto_server

    with moto_server() as endpoint:
        saved = {k: os.environ.get(k) for k in endpoint.env}
        os.environ.update(endpoint.env)
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
