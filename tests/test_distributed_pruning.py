"""Data-driven pruning under torchrun: two gloo processes plan byte-identically, and as one process on all data.

``python -m torch.distributed.run`` (torchrun) starts two ranks of this module's ``__main__``; each plans with
every data-driven method on its half of the data and writes its plans' JSON. The test then compares the ranks'
files byte for byte and with the plans one process makes from the concatenated data (the independent reference:
no reduction runs in one process). Scores are reduced in float64, so summation order could only flip an exact
near-tie; the tiny data here has none, and the plans compare equal exactly. A second launch gives the ranks models
of different widths: both must raise the architecture error rather than hang (a timeout fails the test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import pyprune
from pyprune.distributed import (
    check_rank_identical,
    exit_rank,
    fingerprint,
    gather_rows,
    sum_counts,
    unwrap_model,
)

ROOT = Path(__file__).resolve().parents[1]
N, BATCH, CLASSES = 32, 4, 4

# (method, options): every data-driven method of issue 14 on the tiny model; flatten/RBF and the CKA measure of
# ablation exercise the gathered (not summed) statistics.
CASES = {
    "taylor": ("taylor", {}),
    "taylor_signed": ("taylor", {"reduction": "signed_sum_then_abs", "flops_lambda": 1e-3}),
    "pfp": ("pfp", {}),
    "pfp_rand": ("pfp_rand", {"seed": 3}),
    "sipp_det": ("sipp_det", {}),
    "sipp_rand": ("sipp_rand", {"seed": 3}),
    "cka_greedy": ("cka_greedy", {}),
    "cka_greedy_flatten": ("cka_greedy", {"representation": "flatten"}),
    "cka_single_rbf": ("cka_single", {"kernel": "rbf"}),
    "oracle": ("oracle", {}),
    "oracle_cka": ("oracle", {"metric": "cka", "at": "3"}),
}


def _model(width: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(N, 2, 8, 8, generator=generator)
    # The two halves (the two ranks' shards) differ: input channel 0 decides the class and is loud in the first,
    # channel 1 in the second, so one shard alone ranks channels differently from both.
    x[: N // 2, 0] *= 3
    x[N // 2 :, 1] *= 3
    y = (x[:, 0].mean(dim=(1, 2)) * 4 + 2).clamp(0, CLASSES - 1).long()
    return x, y


def _batches(ranks: range) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the shards of ``ranks`` (rank r holds samples r*N/2 ... (r+1)*N/2 - 1), concatenated."""
    x, y = _data()
    half = N // 2
    return [
        (x[i : i + BATCH], y[i : i + BATCH]) for r in ranks for i in range(r * half, (r + 1) * half, BATCH)
    ]


def _plan(case: str, batches: list, model: nn.Module | None = None) -> str:
    method, options = CASES[case]
    model = _model() if model is None else model
    plan = pyprune.plan(
        model, method, 0.4, example_input=_data()[0][:2], data=batches, progress=False, **options
    )
    return plan.to_json()


# ----------------------------------------------------------------------------------------------------------
# ranks (run under torchrun by the tests below)


def _plans_on_rank(rank: int) -> dict[str, str]:
    import warnings

    warnings.simplefilter("ignore")  # SiPP/PFP warn that 16 samples are fewer than their bound asks for
    plans = {case: _plan(case, _batches(range(rank, rank + 1))) for case in CASES}
    # A DDP-wrapped model plans as its module.
    wrapped = nn.parallel.DistributedDataParallel(_model())
    plans["taylor_ddp"] = _plan("taylor", _batches(range(rank, rank + 1)), wrapped)
    plans["one_shot"] = _one_shot_on_rank()
    plans["iterative_remove"] = _iterative_removal(distributed=True)
    plans.update(_accumulated_in_steps(_batches(range(rank, rank + 1))))
    # Helpers: counts and gathered rows over both ranks (the reference is arithmetic on the rank numbers).
    plans["sum_counts"] = json.dumps(sum_counts([rank + 1, 10 * rank]))
    rows = gather_rows(torch.full((rank + 1, 2), float(rank)))
    plans["gather_rows"] = json.dumps(rows.tolist())
    try:
        check_rank_identical([1.0, float(rank)], "evaluate")
        plans["check_rank_identical"] = "no error"
    except ValueError as error:
        plans["check_rank_identical"] = str(error)
    plans["mismatch"] = _mismatch_on_rank(rank)
    return plans


def _accumulated_in_steps(batches: list) -> dict[str, str]:
    """Criteria fed in several steps before planning: Taylor batch by batch as during training (what
    schedules.iterative does), a SiPP/PFP tracker over two calls (maxima reduced after each; counts summed)."""
    from pyprune.pruning.criteria.provable.tracker import SensitivityTracker

    model, example = _model(), _data()[0][:2]
    taylor = pyprune.Taylor(model)
    for x, y in batches:
        with taylor.accumulate():
            nn.functional.cross_entropy(model(x), y).backward()
    manual = pyprune.plan_structured(model, 0.4, example, criterion=taylor, scope="global", method="taylor")
    tracker = SensitivityTracker(model)
    for part in (batches[:1], batches[1:]):
        tracker.accumulate_over(part, progress=False)
    steps = pyprune.plan(model, "pfp", 0.4, example_input=example, data=tracker, progress=False)
    return {"taylor_in_steps": manual.to_json(), "pfp_in_steps": steps.to_json()}


def _one_shot_on_rank() -> str:
    """one_shot unchanged under torchrun on a DDP model: a masking data-driven plan and one fine-tuning epoch
    on DistributedSampler shards; returns the plan and a digest of the final weights."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = TensorDataset(*_data())
    loader = DataLoader(dataset, batch_size=BATCH, sampler=DistributedSampler(dataset, shuffle=False))
    model = nn.parallel.DistributedDataParallel(_model())
    result = pyprune.schedules.one_shot(
        model, "sipp_det", 0.5, train_loader=loader, eval_loader=loader, epochs=1, progress=False
    )
    final = result.final
    weights = [p.detach().double().sum().item() for p in unwrap_model(model).parameters()]
    return json.dumps({"keep": final.keep, "loss": final.loss, "weights": weights})


def _iterative_removal(*, distributed: bool) -> str:
    """iterative removing channels (two rounds of two per layer, two fine-tuning steps each): under torchrun on a
    DDP model with DistributedSampler shards of ``BATCH``, or in one process on batches of ``2 * BATCH`` (global step
    k of the two ranks averages samples 8k ... 8k + 7, as one batch of 8 does). Returns whether the final model is a
    DDP wrapper, its parameters' shapes and their float64 sums."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = TensorDataset(*_data())
    if distributed:
        loader = DataLoader(dataset, batch_size=BATCH, sampler=DistributedSampler(dataset, shuffle=False))
        model: nn.Module = nn.parallel.DistributedDataParallel(_model())
    else:
        loader = DataLoader(dataset, batch_size=2 * BATCH)
        model = _model()
    result = pyprune.schedules.iterative(
        model,
        "l1_filter",
        channels_target=0.5,
        channels_per_round=2,
        fine_tune_steps=2,
        method_options={"scope": "layer"},  # the widths then depend on the shapes only
        train_loader=loader,
        eval_loader=loader,
        progress=False,
    )
    parameters = list(unwrap_model(result.final_model).parameters())
    return json.dumps(
        {
            "ddp": isinstance(result.final_model, nn.parallel.DistributedDataParallel),
            "shapes": [list(p.shape) for p in parameters],
            "sums": [p.detach().double().sum().item() for p in parameters],
        }
    )


def _mismatch_on_rank(rank: int) -> str:
    """Rank 1's model is wider: the plan must raise on both ranks (the error's text) rather than hang."""
    try:
        _plan("taylor", _batches(range(rank, rank + 1)), _model(width=6 + rank))
    except ValueError as error:
        return str(error)
    return "no error"


def _main(out_dir: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    result = _plans_on_rank(rank)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result, sort_keys=True))
    exit_rank()


# ----------------------------------------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, str]]:
    """What each of two torchrun ranks planned (one launch for the module's tests: startup is most of it)."""
    out_dir = tmp_path_factory.mktemp("ranks")
    timeout = 180.0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "tests.test_distributed_pruning",
        str(out_dir),
    ]
    # A session of its own, so that a hang is ended with the ranks torchrun started, not only torchrun.
    launcher = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        pytest.fail(f"torchrun: no exit within {timeout} s (a hang)")
    assert launcher.returncode == 0, stderr[-6000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


needs_dist = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on a loaded two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@needs_dist
@pytest.mark.slow
def test_two_ranks_plan_identically_and_as_one_process_on_all_data(ranks, one_thread):
    import warnings

    for key in ranks[0]:
        assert ranks[0][key] == ranks[1][key], f"{key}: the ranks planned differently"
    assert sum(1 for key in ranks[0] if key in CASES) == len(CASES)

    everything = _batches(range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in CASES:
            single = _plan(case, everything)
            assert ranks[0][case] == single, f"{case}: two ranks differ from one process on all data"
            # The test can fail: planning on its shard alone, some rank would plan differently.
            shards = [_plan(case, _batches(range(r, r + 1))) for r in (0, 1)]
            assert shards != [single, single], f"{case}: the shards do not discriminate"
        assert ranks[0]["taylor_ddp"] == _plan("taylor", everything)
        in_steps = _accumulated_in_steps(everything)
        assert ranks[0]["taylor_in_steps"] == in_steps["taylor_in_steps"] == _plan("taylor", everything)
        assert ranks[0]["pfp_in_steps"] == in_steps["pfp_in_steps"] == _plan("pfp", everything)
        assert json.loads(ranks[0]["one_shot"])["keep"] == pytest.approx(0.5, abs=0.01)

    assert json.loads(ranks[0]["sum_counts"]) == [1 + 2, 0 + 10]
    assert json.loads(ranks[0]["gather_rows"]) == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert "evaluate: returned different values on different ranks" in ranks[0]["check_rank_identical"]


@needs_dist
@pytest.mark.slow
def test_a_schedule_that_removes_channels_rewraps_the_ddp_model(ranks, one_thread):
    """Removing channels replaces parameters that the DDP wrapper registered when it was built; the schedule wraps
    the pruned module anew, so fine-tuning keeps the ranks in step (the ranks' results are equal, as every key is
    in the first test) and trains as one process on all the data does."""
    distributed = json.loads(ranks[0]["iterative_remove"])
    single = json.loads(_iterative_removal(distributed=False))
    assert distributed["ddp"]
    assert not single["ddp"]
    assert distributed["shapes"] == single["shapes"]
    # channels_target 0.5 of the 6 + 8 channels: 7 kept, each layer cut in proportion (scope="layer").
    assert [distributed["shapes"][0][0], distributed["shapes"][2][0]] == [3, 4]
    assert distributed["sums"] == pytest.approx(single["sums"], rel=1e-5, abs=1e-6)


@needs_dist
@pytest.mark.slow
def test_mismatched_architectures_raise_on_every_rank(ranks):
    for rank in ranks:
        assert "model: the ranks of the process group hold different architectures" in rank["mismatch"]
        assert (
            "first difference: rank 0 has ('0.weight', (6, 2, 3, 3)) where rank 1 has ('0.weight'"
            in (rank["mismatch"])
        )


def test_helpers_are_no_ops_without_a_process_group():
    model = _model()
    x = torch.arange(6.0).reshape(3, 2)
    assert gather_rows(x) is x
    assert sum_counts([3, 4]) == [3, 4]
    check_rank_identical([float("nan")], "evaluate")
    assert unwrap_model(model) is model
    # Names and shapes, not values: a retrained copy has the same fingerprint, another width does not.
    trained = _model()
    with torch.no_grad():
        trained[0].weight.add_(1.0)
    assert fingerprint(trained) == fingerprint(model) != fingerprint(_model(width=7))


if __name__ == "__main__":
    _main(sys.argv[1])
