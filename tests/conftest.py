import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from augment.toy.clip_tokenizer import write_clip_tokenizer_files

    return write_clip_tokenizer_files(tmp_path_factory.mktemp("clip-tokenizer"))
