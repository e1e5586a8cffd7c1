"""Mixed precision, torch.compile fallback and channels-last: the per-device speed settings of a run."""

import os
import shutil

import pytest
import torch

import capsnet
from capsnet import TrainConfig, Trainer, margin_loss, reconstruction_loss
from capsnet.training.precision import (
    CompiledOrEager, autocast, compile_mode, grad_scaler, resolve_channels_last, resolve_precision,
)

CPU = torch.device("cpu")


def test_auto_precision_is_float32_and_explicit_choices_are_kept():
    assert resolve_precision("auto") == "32"
    for name in ("32", "bf16", "16-mixed"):
        assert resolve_precision(name) == name


def test_channels_last_defaults_to_off_on_cpu():
    assert resolve_channels_last(None, CPU) is False
    assert resolve_channels_last(True, CPU) is True


@pytest.mark.parametrize("precision, dtype", [("32", torch.float32), ("bf16", torch.bfloat16), ("16-mixed", torch.float16)])
def test_autocast_runs_matrix_products_in_the_chosen_dtype(precision, dtype):
    with autocast(precision, CPU):
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == dtype


def test_loss_scaling_only_for_float16():
    assert grad_scaler("16-mixed", CPU).is_enabled()
    assert not grad_scaler("bf16", CPU).is_enabled()
    assert not grad_scaler("32", CPU).is_enabled()


def test_model_outputs_and_losses_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = capsnet.create_model("capsnet-tiny")
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with autocast("bf16", CPU):
        out = model(images, labels)
        terms = capsnet.CapsuleLoss().terms(out, images, labels)
    assert out.lengths.dtype == torch.float32
    assert all(term.dtype == torch.float32 and torch.isfinite(term) for term in terms)
    reference = reconstruction_loss(out.reconstructions.float(), images)
    torch.testing.assert_close(terms.reconstruction, reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_margin_loss_of_half_precision_lengths_is_computed_in_float32(dtype):
    lengths = torch.full((2, 5000), 0.99)  # many classes: a float16 sum keeps ~3 digits of 1980
    loss = margin_loss(lengths.to(dtype), torch.tensor([0, 1]))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, margin_loss(lengths.to(dtype).float(), torch.tensor([0, 1])))
    assert margin_loss(lengths.double(), torch.tensor([0, 1])).dtype == torch.float64  # wider stays wider


def test_reconstruction_loss_of_bf16_outputs_is_computed_in_float32():
    torch.manual_seed(0)
    reconstructions, images = torch.rand(8, 784), torch.rand(8, 1, 28, 28)
    loss = reconstruction_loss(reconstructions.bfloat16(), images)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reconstruction_loss(reconstructions.bfloat16().float(), images))


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    module = torch.nn.Linear(3, 2)

    def broken_compiled(x):
        raise RuntimeError("no C++ compiler found\ndetails")

    monkeypatch.setattr(torch, "compile", lambda function, **options: broken_compiled)
    runner = CompiledOrEager(module)
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="torch.compile is not available here \\(no C\\+\\+ compiler found\\)"):
        out = runner(x)
    torch.testing.assert_close(out, module(x))
    torch.testing.assert_close(runner(x), module(x))  # eager from now on, no second warning


def test_after_a_first_success_only_compiler_errors_fall_back(monkeypatch):
    class RecompileFailed(RuntimeError):
        pass

    RecompileFailed.__module__ = "torch._inductor.exc"  # what Inductor raises when a new shape fails to compile
    errors = iter([None, RecompileFailed("CppCompileError: new shape"), None, ValueError("bad input")])

    def compiled(x):
        error = next(errors)
        if error is not None:
            raise error
        return x * 2

    monkeypatch.setattr(torch, "compile", lambda function, **options: compiled)
    runner = CompiledOrEager(lambda x: x * 2)
    assert runner(torch.ones(1)).item() == 2
    with pytest.warns(UserWarning, match="CppCompileError: new shape"):
        assert runner(torch.ones(2)).sum().item() == 4  # eager from now on
    assert runner.compiled is None

    runner = CompiledOrEager(lambda x: x * 2)
    assert runner(torch.ones(1)).item() == 2
    with pytest.raises(ValueError, match="bad input"):  # an error of the run itself is not hidden
        runner(torch.ones(1))


def test_compile_that_cannot_even_start_falls_back(monkeypatch):
    def refuse(function, **options):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.warns(UserWarning, match="Dynamo is not supported"):
        runner = CompiledOrEager(torch.nn.Identity())
    assert runner(torch.ones(1)).item() == 1


def test_compile_mode_uses_cuda_graphs_on_a_single_gpu_and_compiles_there_by_default():
    gpu = torch.device("cuda", 0)
    for choice in (None, True):
        assert compile_mode(choice, gpu, distributed=False) == "reduce-overhead"
    assert compile_mode(True, gpu, distributed=True) == "default"
    assert compile_mode(True, CPU, distributed=False) == "default"
    assert compile_mode(None, gpu, distributed=True) is None
    assert compile_mode(None, CPU, distributed=False) is None
    assert compile_mode(False, gpu, distributed=False) is None


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="no C++ compiler for torch.compile's CPU backend (inductor)")
@pytest.mark.filterwarnings("error:torch.compile is not available here:UserWarning")  # no fallback to eager
def test_compiled_training_computes_the_eager_losses(tmp_path, shared_data, monkeypatch):
    """The model and its losses compiled together (CPU: C++ kernels) give the eager run's losses over three
    steps, the last one a smaller batch (a second graph), up to float rounding."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # compiled afresh, as on CI
    def first_epoch(compile):
        config = TrainConfig(model="capsnet-tiny", limit_train=80, limit_test=64, batch_size=32, epochs=1,
                             progress=False, data_dir=str(shared_data), output_dir=str(tmp_path / str(compile)),
                             compile=compile)
        return Trainer(config).fit()[0]

    eager, compiled = first_epoch(False), first_epoch(True)
    for key in ("train_loss", "train_margin_loss", "train_reconstruction_loss", "train_accuracy"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5), key


def _predictions(tmp_path, shared_data, precision):
    trainer = Trainer(TrainConfig(
        model="capsnet-tiny", limit_train=512, limit_test=300, batch_size=32, epochs=1, progress=False,
        data_dir=str(shared_data), output_dir=str(tmp_path / precision), precision=precision,
    ))
    history = trainer.fit()
    trainer.model.eval()
    with torch.no_grad(), autocast(precision, trainer.device):
        return trainer.model(trainer.test_images.float() / 255).lengths.argmax(-1), history[-1]["test_error"]


def test_bf16_training_makes_the_same_predictions_as_float32_on_most_inputs(tmp_path, shared_data):
    """16 Adam steps of the tiny CapsNet from the same start on the same batches, in fp32 and in bf16."""
    fp32, fp32_error = _predictions(tmp_path, shared_data, "32")
    bf16, bf16_error = _predictions(tmp_path, shared_data, "bf16")
    agreement = (fp32 == bf16).float().mean().item()
    assert agreement >= 0.95, f"bf16 and fp32 agree on {agreement:.1%} of 300 test images"
    assert abs(fp32_error - bf16_error) <= 0.03
