"""A non-finite loss stops training with the step, the last good checkpoint and the likely cause (issue 15,
item 6: trainer.precision=16-true trained on NaN from step 2, printed `val perplexity nan` and exited 0)."""

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

import torch
from _lm_helpers import lm_files, tiny_lm_cfg

from flyweight.train.finite import NonFiniteLossError, check_finite_loss
from flyweight.train.lm import train_lm
from flyweight.utils.errors import USER_ERRORS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nan")
    return lm_files(root)


def test_fp16_without_loss_scaling_stops_at_the_first_nan_step(data, tmp_path):
    cfg = tiny_lm_cfg(data["wt"], data["tok"], data["cache"],
                      trainer={"max_steps": 6, "precision": "16-true", "save_model": True})
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 2 \(trainer\.precision=16-true\)"
                                                 r".*No checkpoint was saved before it.*16-mixed \(loss scaling\)"):
        train_lm(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()  # no NaN model saved as if it were a result
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_message_names_the_newest_checkpoint_before_the_bad_step(data, tmp_path):
    cfg = tiny_lm_cfg(data["wt"], data["tok"], data["cache"], trainer={"max_steps": 4, "ckpt_every_n_steps": 1,
                                                                         "keep_checkpoints": -1})
    train_lm(cfg, tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    # step 4's loss came from the weights after step 3 (step 3's checkpoint); step 2's gave a finite loss
    with pytest.raises(NonFiniteLossError, match=rf"inf at step 4 .*The last good checkpoint is "
                                                 rf"{ckpts / 'step000002.ckpt'}.*optim\.lr, now 0\.001"):
        check_finite_loss(float("inf"), 4, "32-true", ckpts, lr=0.001)
    check_finite_loss(3.5, 4, "32-true", ckpts)  # finite: nothing happens


def test_it_is_reported_as_a_user_error_not_a_traceback():
    assert issubclass(NonFiniteLossError, USER_ERRORS)
