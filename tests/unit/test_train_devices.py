"""Device selection rules: select_gpus / select_gpu_count, DIGITS_TRAIN_GPUS, the CPU hook."""

from __future__ import annotations

import pytest

from digits.config import ConfigError, Settings
from digits.models.options import TrainOptions
from train_service.devices import (
    DeviceError,
    Devices,
    Plan,
    available,
    check_batch,
    cpu_devices_from_env,
    plan,
)

FOUR = Devices("GPU", (0, 1, 2, 3), tuple(f"/device:GPU:{k}" for k in range(4)))
# A worker restricted to GPUs 1 and 3: TF sees them as its GPU:0 and GPU:1.
RESTRICTED = Devices("GPU", (1, 3), ("/device:GPU:0", "/device:GPU:1"))


def test_one_selected_gpu_pins_the_job_to_it():
    chosen = plan((2,), None, FOUR)
    assert chosen == Plan((2,), ("/device:GPU:2",), explicit=True)
    assert chosen.replicas == 1


def test_several_selected_gpus_are_mirrored_in_the_order_given():
    chosen = plan((3, 1, 3), None, FOUR)
    assert chosen.indexes == (3, 1) and chosen.names == ("/device:GPU:3", "/device:GPU:1")
    assert chosen.replicas == 2


def test_indexes_are_the_users_not_tensorflows_on_a_restricted_worker():
    assert plan((3,), None, RESTRICTED).names == ("/device:GPU:1",)


def test_a_gpu_the_worker_lacks_is_an_error_naming_it_and_the_available_ones():
    with pytest.raises(DeviceError) as err:
        plan((0, 2), None, RESTRICTED)
    assert str(err.value) == "GPU 0 is not available on this worker; available GPUs: 1, 3"
    with pytest.raises(DeviceError, match="GPU 0 is not available.*available GPUs: none"):
        plan((0,), None, Devices("GPU"))


def test_a_count_takes_the_first_gpus_and_cannot_exceed_the_workers():
    assert plan((), 2, FOUR).indexes == (0, 1)
    assert plan((), 1, RESTRICTED) == Plan((1,), ("/device:GPU:0",), explicit=True)
    with pytest.raises(
        DeviceError, match=r"select_gpu_count 3 .* than this worker has \(2: 1, 3\)"
    ):
        plan((), 3, RESTRICTED)


def test_selected_gpus_win_over_a_count_as_in_digits():
    assert plan((3,), 4, FOUR).indexes == (3,)


def test_nothing_selected_mirrors_all_gpus_or_uses_the_default_device():
    assert plan((), None, FOUR) == Plan(FOUR.indexes, FOUR.names, explicit=False)
    one = plan((), None, Devices("GPU", (0,), ("/device:GPU:0",)))
    assert one.names == () and one.replicas == 1
    assert plan((), None, Devices("GPU")).replicas == 1


def test_mirrored_batches_must_split_evenly_and_not_accumulate():
    two = plan((0, 1), None, FOUR)
    check_batch(two, 32, 1)
    check_batch(plan((0,), None, FOUR), 33, 4)  # one device: anything goes
    with pytest.raises(DeviceError, match="batch_size 33 does not split evenly across 2 devices"):
        check_batch(two, 33, 1)
    with pytest.raises(DeviceError, match="batch_accumulation 2 is not supported across 2"):
        check_batch(two, 32, 2)


def test_the_operator_restriction_keeps_only_gpus_the_machine_has():
    assert available([0, 1, 2], ()) == (0, 1, 2)
    assert available([0, 1, 2], (2, 0)) == (2, 0)
    assert available([0, 1], (1, 5)) == (1,)


def test_digits_train_gpus_is_parsed_and_checked():
    assert Settings.from_env({}).train_gpus == ()
    settings = Settings.from_env({"DIGITS_TRAIN_GPUS": " 1, 3,1"})
    assert settings.train_gpus == (1, 3)
    assert settings.to_env()["DIGITS_TRAIN_GPUS"] == "1,3"
    assert "DIGITS_TRAIN_GPUS" not in Settings.from_env({}).to_env()
    with pytest.raises(ConfigError, match=r"DIGITS_TRAIN_GPUS='0,gpu1': 'gpu1' is not a GPU index"):
        Settings.from_env({"DIGITS_TRAIN_GPUS": "0,gpu1"})


def test_the_cpu_device_hook_is_checked():
    assert cpu_devices_from_env({}) == 0
    assert cpu_devices_from_env({"DIGITS_TRAIN_CPU_DEVICES": "2"}) == 2
    for bad in ("0", "two", "-1", "65"):
        with pytest.raises(ValueError, match=f"DIGITS_TRAIN_CPU_DEVICES='{bad}'"):
            cpu_devices_from_env({"DIGITS_TRAIN_CPU_DEVICES": bad})


def test_the_form_fields_are_parsed():
    opts = TrainOptions.from_form({"select_gpus": "0, 2,0", "select_gpu_count": "3"})
    assert opts.gpus == (0, 2) and opts.gpu_count == 3
    assert TrainOptions.from_form({"select_gpus": ["1", 3]}).gpus == (1, 3)
    empty = TrainOptions.from_form({"select_gpus": "", "select_gpu_count": ""})
    assert empty.gpus == () and empty.gpu_count is None
    with pytest.raises(ValueError, match=r"select_gpus '0,x': 'x' is not a GPU index"):
        TrainOptions.from_form({"select_gpus": "0,x"})
    with pytest.raises(ValueError, match=r"select_gpu_count '0' is out of range"):
        TrainOptions.from_form({"select_gpu_count": "0"})


def test_pretrained_needs_a_previous_model_or_an_archive():
    key = "uploads/pretrained/abc.tar.gz"
    opts = TrainOptions.from_form({"method": "pretrained", "pretrained_archive": key})
    assert opts.pretrained_archive == key and opts.previous_job is None
    opts = TrainOptions.from_form({"method": "pretrained", "previous_networks": "m1"})
    assert opts.previous_job == "m1" and opts.pretrained_archive is None
    assert TrainOptions.from_form({"pretrained_archive": key}).pretrained_archive is None
    with pytest.raises(ValueError, match="needs previous_networks .* or pretrained_archive"):
        TrainOptions.from_form({"method": "pretrained"})
    for bad in ("/etc/passwd", "uploads/../models/x.tar.gz"):
        with pytest.raises(ValueError, match=f"pretrained_archive '{bad}' is not a store key"):
            TrainOptions.from_form({"method": "pretrained", "pretrained_archive": bad})
