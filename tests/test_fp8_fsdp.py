"""FSDP2 over the FP8 stack (lowprec_workloads/fp8_fsdp.py) and the torchrun-style launcher
(lowprec_workloads/fp8_data_parallel.py), on the CPU: single-process pieces directly, distributed ones
as 2 gloo ranks started by the launcher itself."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lowprec_workloads.fp8_data_parallel import (
    DDP,
    GATED,
    DistributedError,
    Job,
    Scaling,
    label,
    launch,
    run_ranks,
    scaling,
    single_process_losses,
    step_collectives,
)
from lowprec_workloads.fp8_fsdp import (
    Fp8AllGatherLinear,
    Fp8GatheredMatmul,
    Fp8GatheredWeight,
    Fp8ShardedWeight,
    Fsdp2Config,
    WeightScale,
)
from lowprec_workloads.fp8_training import E4M3, RECIPE, Fp8Recipe, Linear, Shape, quantize_operand

TINY = Shape(d=64, blocks=2, tokens=512, steps=3)
EVERY_VARIANT = (DDP,) + tuple(Fsdp2Config(fp8, reshard, reduce, unit) for fp8 in (True, False)
                               for reshard in (False, True) for reduce in ("float32", "bfloat16")
                               for unit in ("block", "linear", "model")) \
    + tuple(Fsdp2Config(fp8, reshard, reduce, prefetch=True) for fp8 in (True, False) for reshard in (False, True)
            for reduce in ("float32", "bfloat16"))


def _linear(fp8: bool = True, seed: int = 0, device: str = "cpu") -> Linear:
    """The same weights on every device: drawn on the CPU, then moved."""
    return Linear(64, 256, fp8, torch.Generator().manual_seed(seed), "cpu").to(device)


def _ranks(tmp_path: Path, body: str, world: int = 2) -> list[dict]:
    """Run `body` as `world` gloo ranks (rank, world, mesh and out_dir defined); each rank's `result`."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch, torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        rank, world, out_dir = dist.get_rank(), dist.get_world_size(), sys.argv[1]
        mesh = init_device_mesh("cpu", (world,))
    """) + textwrap.dedent(body) + textwrap.dedent("""
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        dist.barrier()  # ranks tear down together, then skip the interpreter's teardown (fp8_data_parallel.main)
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)
    """))
    run_ranks([sys.executable, str(script), str(tmp_path)], world, tmp_path, timeout_s=120)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def _scaling_benchmark():
    """benchmarks/fsdp2_scaling.py as a module (benchmarks/ is no package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import fsdp2_scaling
    finally:
        sys.path.pop(0)
    return fsdp2_scaling


# -- the FP8 pieces, in one process ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_gathered_matmul_gives_the_stacks_fp8_matmul_bits_forward_and_backward(device):
    """On CUDA the gathered weight's transpose is the Triton byte transpose, the stack's the quantizer's
    second layout."""
    linear = _linear(device=device)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16).requires_grad_()
    grad_out = torch.randn(32, 256, generator=torch.Generator().manual_seed(2)).to(device, torch.bfloat16)
    y_ref = linear(x)
    y_ref.backward(grad_out)
    ref = (y_ref, x.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone())

    x.grad = None
    wq, inv = quantize_operand(linear.weight.detach(), E4M3)  # the stack's first cast: the weight's own amax
    weight = torch.nn.Parameter(Fp8GatheredWeight(wq, inv, torch.float32))
    bias = torch.nn.Parameter(linear.bias.detach().clone())
    y = Fp8GatheredMatmul.apply(x, weight, bias, RECIPE, None)
    y.backward(grad_out)
    for name, got, want in zip(("output", "input grad", "weight grad", "bias grad"),
                               (y, x.grad, weight.grad, bias.grad), ref, strict=True):
        assert torch.equal(got, want), name


def test_fp8_all_gather_refuses_a_linear_it_cannot_gather():
    with pytest.raises(ValueError, match="tensor scales"):
        Fp8AllGatherLinear(_linear(fp8=False))
    row = _linear()
    row.recipe = Fp8Recipe(scaling="row")
    with pytest.raises(ValueError, match="tensor scales"):
        Fp8AllGatherLinear(row)


def test_a_shard_keeps_its_weights_scale_through_fsdps_views_and_is_plain_to_arithmetic():
    scale = WeightScale(RECIPE, torch.device("cpu"))
    weight = Fp8ShardedWeight(torch.arange(12.0).reshape(4, 3), scale)
    for piece in (weight[:2], weight.view(12), weight.detach(), weight.new_zeros(2, 3), torch.empty_like(weight)):
        assert type(piece) is Fp8ShardedWeight and piece._scale is scale
    total = weight * 2 + 1
    assert type(total) is torch.Tensor and torch.equal(total, torch.arange(12.0).reshape(4, 3) * 2 + 1)


@pytest.mark.parametrize("rows, ranks, empty", [(64, 2, False), (65, 2, False), (5, 4, True), (3, 4, True),
                                                (9, 4, True),
                                                (10, 4, False), (4096, 8, False)])
def test_a_split_that_leaves_a_rank_no_rows_is_recognised(rows, ranks, empty):
    from lowprec_workloads.fp8_fsdp import rows_leave_a_rank_empty

    pieces = [len(piece) for piece in torch.arange(rows).chunk(ranks)]  # FSDP2's split
    assert (len(pieces) < ranks) == empty
    assert rows_leave_a_rank_empty(rows, ranks) == empty


def test_a_shard_is_not_all_gathered_before_its_scale_is_synced():
    weight = Fp8ShardedWeight(torch.ones(4, 3), WeightScale(RECIPE, torch.device("cpu")))
    with pytest.raises(RuntimeError, match="sync_weight_scales"):
        weight.fsdp_pre_all_gather(None, weight.shape, weight.stride(), None, None)


def test_a_gathered_weight_is_only_read_by_the_fp8_linear():
    weight = Fp8GatheredWeight(torch.zeros(4, 3, dtype=E4M3), torch.ones(()), torch.float32)
    assert weight.dtype == torch.float32 and type(weight.detach()) is Fp8GatheredWeight
    with pytest.raises(NotImplementedError, match="only Fp8AllGatherLinear reads it"):
        weight + 1


def test_fsdp2_config_names_its_choices_and_refuses_an_unknown_reduce_dtype():
    assert Fsdp2Config(True, False, "bfloat16").label == \
        "fsdp2 fp8 all-gather, keep after forward, bfloat16 reduce-scatter"
    assert Fsdp2Config(unit="linear").label.endswith(", per linear")
    assert Fsdp2Config(unit="model").label.endswith(", per model")
    assert Fsdp2Config(prefetch=True).label.endswith(", prefetch")
    with pytest.raises(ValueError, match="float16"):
        Fsdp2Config(reduce_dtype="float16")
    with pytest.raises(ValueError, match="unit 'layer'"):
        Fsdp2Config(unit="layer")
    with pytest.raises(ValueError, match="prefetch"):
        Fsdp2Config(unit="linear", prefetch=True)


def test_fp8_all_gather_moves_a_quarter_of_the_float32_weight_bytes_and_resharding_gathers_twice():
    def gathered_bytes(variant) -> int:
        return sum(n * torch.empty((), dtype=dtype).element_size() for kind, dtype, n in
                   step_collectives(TINY, variant) if kind == "all_gather")

    fc = TINY.blocks * 8 * TINY.d * TINY.d
    fp8, fp32 = gathered_bytes(Fsdp2Config(True)), gathered_bytes(Fsdp2Config(False))
    assert fp32 - fp8 == 3 * fc
    assert gathered_bytes(Fsdp2Config(True, reshard_after_forward=True)) == 2 * fp8
    assert [kind for kind, _, _ in step_collectives(TINY, DDP)] == ["all_reduce"]


# -- jobs and results ------------------------------------------------------------------------------------------


def test_a_job_round_trips_through_its_json_file_with_every_variant(tmp_path):
    job = Job(TINY, 2, False, str(tmp_path), "time", variants=EVERY_VARIANT, poison_step=1)
    assert Job.from_json(job.to_json()) == job


def test_a_job_refuses_a_batch_that_does_not_split_and_a_training_of_two_variants(tmp_path):
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        Job(TINY, 3, False, str(tmp_path), "train")
    with pytest.raises(ValueError, match="one variant"):
        Job(TINY, 2, False, str(tmp_path), "train", variants=(GATED, DDP))


def test_a_job_captures_cuda_graphs_only_of_gpu_steps(tmp_path):
    with pytest.raises(ValueError, match="graphs.*cuda False"):
        Job(TINY, 2, False, str(tmp_path), "time", graphs=True)


def test_a_job_captures_cuda_graphs_only_of_timed_steps(tmp_path):
    with pytest.raises(ValueError, match="graphs.*mode 'train'"):
        Job(TINY, 2, True, str(tmp_path), "train", graphs=True)


def test_a_graphs_job_round_trips_through_its_json_file(tmp_path):
    job = Job(TINY, 2, True, str(tmp_path), "time", graphs=True)
    assert Job.from_json(job.to_json()) == job


def test_a_replay_holds_its_side_alive():
    """The graph's pool keeps only what its capture allocated: the weights and the optimizer's state belong
    to the side, which must live as long as the replay (the first captured run on an H200 died in the
    replays with an illegal memory access when nothing else held the sides)."""
    import gc
    import weakref

    from lowprec_workloads.fp8_data_parallel import _Replay

    class Side:
        pass

    class Graph:
        replays = 0

        def replay(self):
            self.replays += 1

    side, graph = Side(), Graph()
    replay, alive = _Replay(graph, side), weakref.ref(side)
    del side
    gc.collect()
    replay()
    assert alive() is not None and graph.replays == 1


def test_weights_holding_a_nan_differ_without_bound_from_any_others():
    """A replay that read garbage can leave NaN weights: the check must not pass them (max() over Python
    floats would skip the NaN and report 0)."""
    from lowprec_workloads.fp8_data_parallel import _largest_difference

    same = [torch.ones(3), torch.zeros(2)]
    assert _largest_difference(same, [t.clone() for t in same]) == 0.0
    poisoned = [torch.tensor([1.0, float("nan"), 1.0]), torch.zeros(2)]
    assert _largest_difference(poisoned, same) == float("inf")


def test_scaling_is_one_gpus_step_over_the_data_parallel_step_of_the_slowest_rank():
    def rank(one_gpu, synced, host):
        return {"times_ms": {"one_gpu": one_gpu, label(GATED): synced}, "comm_alone_ms": {label(GATED): 5.0},
                "host_ms": {"one_gpu": [1.0], label(GATED): host}, "errors": {}, "tokens_per_rank": 4096,
                "graph_check": {}}

    result = scaling([rank([10.0, 10.0, 11.0], [12.0, 12.5, 13.0], [3.0]), rank([10.0], [12.0], [4.0, 6.0])], GATED)
    assert (result.single_ms, result.synced_ms, result.efficiency) == (10.0, 12.5, 0.8)
    assert result.host_ms == 5.0  # the slowest rank's median issue time
    assert result.hidden_fraction == pytest.approx(0.5)
    assert result.tokens_per_s == pytest.approx(2 * 4096 / 0.0125)
    assert Scaling(10.0, 9.0, 2.0, 2, 1).hidden_fraction == 1.5  # sharding saved more than it exposed


def test_scaling_of_eager_steps_has_no_replay_difference():
    rank = {"times_ms": {"one_gpu": [10.0], label(GATED): [11.0]}, "comm_alone_ms": {label(GATED): 1.0},
            "host_ms": {label(GATED): [9.0]}, "errors": {}, "tokens_per_rank": 4096, "graph_check": {}}
    assert scaling([rank], GATED).replay_difference is None


def test_scaling_of_captured_steps_carries_the_worst_replay_difference_of_its_variant_and_one_gpus():
    def rank(one_gpu_check, variant_check):
        return {"times_ms": {"one_gpu": [10.0], label(GATED): [11.0], label(DDP): [12.0]},
                "comm_alone_ms": {label(GATED): 1.0, label(DDP): 1.0}, "host_ms": {label(GATED): [0.1]},
                "errors": {}, "tokens_per_rank": 4096,
                "graph_check": {"one_gpu": one_gpu_check, label(GATED): variant_check, label(DDP): 7.0}}

    assert scaling([rank(0.0, 0.0), rank(0.0, 0.0)], GATED).replay_difference == 0.0
    assert scaling([rank(0.0, 0.0), rank(0.0, 2e-3)], GATED).replay_difference == 2e-3
    assert scaling([rank(float("inf"), 0.0), rank(0.0, 0.0)], GATED).replay_difference == float("inf")


def test_scaling_of_a_variant_that_failed_says_why():
    failed = {"times_ms": {"one_gpu": [1.0]}, "comm_alone_ms": {}, "errors": {label(DDP): "CUDA out of memory"},
              "tokens_per_rank": 1}
    with pytest.raises(DistributedError, match="ddp.*CUDA out of memory"):
        scaling([failed], DDP)


# -- the launcher (ranks that import nothing heavy) ------------------------------------------------------------


def test_each_rank_gets_torchruns_environment_and_all_meet_at_one_store(tmp_path):
    script = tmp_path / "env.py"
    script.write_text("import json, os, sys\n"
                      "out = os.path.join(sys.argv[1], os.environ['RANK'] + '.json')\n"
                      "json.dump(dict(os.environ), open(out, 'w'))\n")
    run_ranks([sys.executable, str(script), str(tmp_path)], 3, tmp_path, timeout_s=60)
    envs = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [("0", "0", "3"), ("1", "1", "3"),
                                                                             ("2", "2", "3")]
    assert len({e["MASTER_PORT"] for e in envs}) == 1 and int(envs[0]["MASTER_PORT"]) > 0
    assert all(e["TORCHELASTIC_USE_AGENT_STORE"] == "True" and e["NCCL_NVLS_ENABLE"] == "0" for e in envs)


def test_a_failing_rank_is_named_with_the_end_of_its_output(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nif os.environ['RANK'] == '1':\n    sys.exit('rank one gave up')\n")
    with pytest.raises(DistributedError, match=r"(?s)rank 1 of 2 exited with 1.*rank one gave up"):
        run_ranks([sys.executable, str(script)], 2, tmp_path, timeout_s=60)


def test_ranks_that_do_not_finish_in_time_are_stopped(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import os, sys, time\n"
                      "open(os.path.join(sys.argv[1], os.environ['RANK'] + '.pid'), 'w').write(str(os.getpid()))\n"
                      "print('waiting', flush=True)\ntime.sleep(600)\n")
    with pytest.raises(DistributedError, match=r"(?s)did not finish in 3 s.*waiting"):
        run_ranks([sys.executable, str(script), str(tmp_path)], 2, tmp_path, timeout_s=3)
    for pid_file in tmp_path.glob("*.pid"):
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


# -- FSDP2 on 2 gloo ranks -------------------------------------------------------------------------------------


@pytest.mark.slow  # three launches of 2 ranks and a one-process training
def test_fsdp2_trains_the_one_process_first_step_and_neither_fp8_all_gather_prefetching_nor_the_unit_changes_a_bit(
        tmp_path):
    def train(variant):
        job = Job(TINY, 2, False, str(tmp_path / label(variant)), "train", variants=(variant,))
        return launch(job, timeout_s=300)

    fp8, fp32 = train(Fsdp2Config(fp8_all_gather=True)), train(Fsdp2Config(fp8_all_gather=False))
    prefetched = train(Fsdp2Config(fp8_all_gather=True, prefetch=True))
    whole = train(Fsdp2Config(fp8_all_gather=True, unit="model"))
    one_process, _ = single_process_losses(TINY, "cpu", None)
    assert fp8[0]["losses"][0] == one_process[0]  # same weights, same batch: only later steps add in other orders
    assert fp8[0]["losses"] == fp8[1]["losses"] == fp32[0]["losses"] == prefetched[0]["losses"] == whole[0]["losses"]
    assert [r["fp8_weight_mismatches"] for r in fp8] == [0, 0] and fp8[0]["fp8_weights"] == TINY.blocks * 8 * 64 * 64
    assert max(r["replica_max_abs_diff"] for r in fp8 + fp32) == 0.0


@pytest.mark.slow  # 2 ranks
def test_shards_cast_with_different_scales_do_not_decode_as_one_weight(tmp_path):
    """The control for the training test's fp8_weight_mismatches: what a missed scale sync looks like."""
    results = _ranks(tmp_path, """
        from lowprec_workloads.fp8_fsdp import Fsdp2Config, gathered_weights, one_piece_fp8_weights, shard
        from lowprec_workloads.fp8_training import Stack
        model = shard(Stack(64, 1, fp8=True, seed=0, device="cpu"), mesh, Fsdp2Config())
        consistent = gathered_weights(model), one_piece_fp8_weights(model)
        model.blocks[0].fc1.scale.amax.mul_(1 + rank)  # as if each rank scaled by its own amax
        split = gathered_weights(model), one_piece_fp8_weights(model)
        result = [int((g[k] != o[k]).sum()) for g, o in (consistent, split) for k in o if k.endswith("fc1.weight")]
    """)
    assert [r[0] for r in results] == [0, 0]
    assert all(r[1] > 0 for r in results)


@pytest.mark.slow  # 2 ranks
def test_a_synced_scale_is_the_last_casts_amax_or_the_updated_weights_as_the_recipe_says(tmp_path):
    results = _ranks(tmp_path, """
        from lowprec_workloads.fp8_fsdp import Fsdp2Config, gathered_weights, shard, sync_weight_scales, whole
        from lowprec_workloads.fp8_training import Fp8Recipe, Stack
        result = {}
        for weight_amax in ("previous", "current"):
            model = Stack(64, 1, fp8=True, seed=0, device="cpu").set_fp8(True, Fp8Recipe(weight_amax=weight_amax))
            shard(model, mesh, Fsdp2Config())
            linear = model.blocks[0].fc1
            first = whole(linear.weight).abs().amax().item()
            synced_at_start = linear.scale.amax.item()
            gathered_weights(model)  # a cast, as the forward's, records this rank's shard amax
            with torch.no_grad():
                linear.weight.mul_(2.0)  # an optimizer step
            sync_weight_scales(model, mesh.get_group())
            result[weight_amax] = [synced_at_start / first, linear.scale.amax.item() / first]
    """)
    assert results == [{"previous": [1.0, 1.0], "current": [1.0, 2.0]}] * 2


@pytest.mark.slow  # 2 ranks
def test_a_weight_whose_rows_do_not_split_evenly_is_all_gathered_as_its_one_piece_cast(tmp_path):
    """65 rows over 2 ranks: FSDP2 all-gathers equal pieces, so the short shard goes out padded and the
    gathered weight is cut back to its 65 rows: the bytes one process casts from the whole weight."""
    results = _ranks(tmp_path, """
        from lowprec_workloads.fp8_fsdp import Fsdp2Config, gathered_weights, one_piece_fp8_weights, shard
        from lowprec_workloads.fp8_training import Stack
        model = shard(Stack(65, 1, fp8=True, seed=0, device="cpu"), mesh, Fsdp2Config())
        gathered, one_piece = gathered_weights(model), one_piece_fp8_weights(model)
        result = {k: [list(gathered[k].shape), bool(torch.equal(gathered[k], one_piece[k]))] for k in sorted(one_piece)}
    """)
    expected = {"blocks.0.fc1.weight": [[260, 65], True], "blocks.0.fc1.weight_inv_scale": [[], True],
                "blocks.0.fc2.weight": [[65, 260], True], "blocks.0.fc2.weight_inv_scale": [[], True]}
    assert results == [expected, expected]


@pytest.mark.slow  # 2 ranks
def test_fsdp2_steps_through_the_graph_safe_copies_to_the_same_bits(tmp_path):
    """Job.graphs installs graph_safe_ops for FSDP2's all-gather copy-out and reduce-scatter copy-in: with
    them in place of torch's kernels (here on the CPU's dispatch key) FSDP2's steps, a padded LayerNorm
    shard and a float32 and a bfloat16 reduce-scatter among them, end on the same weights, and the
    replacements did run."""
    results = _ranks(tmp_path, """
        from lowprec_workloads import graph_safe_ops
        from lowprec_workloads.fp8_fsdp import Fsdp2Config, local_tensor, shard
        from lowprec_workloads.fp8_training import Stack, objective
        calls = []
        for name in ("chunk_cat_out", "split_with_sizes_copy_out"):
            def counted(*args, _name=name, _fn=getattr(graph_safe_ops, name), **kwargs):
                calls.append(_name)
                return _fn(*args, **kwargs)
            setattr(graph_safe_ops, name, counted)
        gen = torch.Generator().manual_seed(3)
        x, y = torch.randn(32, 65, generator=gen), torch.randint(0, 16, (32,), generator=gen)

        def weights(reduce_dtype):
            model = Stack(65, 1, fp8=True, seed=0, device="cpu")  # 65 rows: the shards are padded
            shard(model, mesh, Fsdp2Config(reduce_dtype=reduce_dtype))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for _ in range(2):
                objective(model, x, y).backward()
                optimizer.step()
                optimizer.zero_grad()
            return [local_tensor(p.detach()).clone() for p in model.parameters()]

        result = {}
        for reduce_dtype in ("float32", "bfloat16"):
            plain = weights(reduce_dtype)
            library = graph_safe_ops.install("CPU")
            replaced = weights(reduce_dtype)
            del library
            result[reduce_dtype] = max(float((a - b).abs().max()) for a, b in zip(plain, replaced))
        result["calls"] = sorted(set(calls))
    """)
    for result in results:
        assert result == {"float32": 0.0, "bfloat16": 0.0, "calls": ["chunk_cat_out", "split_with_sizes_copy_out"]}


@pytest.mark.slow  # 2 ranks
def test_a_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    results = _ranks(tmp_path, """
        from torch.distributed.tensor import DTensor, Shard
        from lowprec_workloads.fp8_data_parallel import _GroupFinite, _LocalGrad
        from lowprec_workloads.fp8_training import LossScaler
        param = torch.nn.Parameter(DTensor.from_local(torch.zeros(2), mesh, [Shard(0)]))
        # rank 1's shard gets an Inf gradient (d sqrt(x)/dx at 0) and a finite loss; rank 0's stays finite
        loss = param.to_local()[1].sqrt() if rank == 1 else param.to_local().sum()
        optimizer = torch.optim.SGD([param], lr=1.0)
        local = [_LocalGrad(param)]
        scaler = LossScaler()
        stepped = scaler.step(loss, local + [_GroupFinite(local, loss, mesh.get_group())], optimizer, 0)
        result = {"stepped": stepped, "skipped": scaler.skipped, "weights": param.to_local().tolist()}
    """)
    assert results == [{"stepped": False, "skipped": [0], "weights": [0.0, 0.0]}] * 2


def test_a_side_that_fails_on_one_rank_is_dropped_on_every_rank_with_the_reason(tmp_path):
    """A capture or a build that fails on one rank only must not leave the other waiting in the next
    side's collectives: every rank drops the side, the failing one with its traceback."""
    results = _ranks(tmp_path, """
        from lowprec_workloads.fp8_data_parallel import _on_every_rank
        def build():
            if rank == 1:
                raise RuntimeError("capture refused on rank one")
            return "built"
        errors = {}
        result = {"failed": _on_every_rank("side", build, errors, "cpu"), "errors": errors,
                  "other": _on_every_rank("next", lambda: "built", {}, "cpu")}
    """)
    assert [r["failed"] for r in results] == [None, None]
    assert results[0]["errors"] == {"side": "failed on another rank"}
    assert "capture refused on rank one" in results[1]["errors"]["side"]
    assert [r["other"] for r in results] == ["built", "built"]


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.distributed.is_nccl_available(),
                    reason="needs a GPU and NCCL")
def test_a_captured_step_replays_what_the_eager_step_computes(tmp_path):
    """With graphs each side's step is a CUDA graph's replay, checked against an eager twin from the same
    seed before and after the timing: the FSDP2 step (its hooks, all-gathers, reduce-scatters and sharded
    optimizer captured) and one GPU's must leave the weights bit for bit where as many eager steps do."""
    shape = Shape(d=256, blocks=2, tokens=512, steps=0)
    job = Job(shape, 1, True, str(tmp_path), "time", variants=(GATED,), timing_rounds=1, timing_steps=2,
              warmup_steps=2, graphs=True)
    (result,) = launch(job, timeout_s=300)
    assert result["errors"] == {}
    assert result["graph_check"] == {"one_gpu": 0.0, label(GATED): 0.0}


_EMULATED_CAPTURE = """
    import contextlib
    from dataclasses import replace
    import lowprec_workloads.fp8_data_parallel as dp
    from lowprec_workloads.fp8_training import Shape

    class Stream:  # the CPU has no streams: the captured path's stream calls do nothing
        def wait_stream(self, other):
            pass

    torch.cuda.Stream = torch.cuda.current_stream = Stream
    torch.cuda.stream = lambda stream: contextlib.nullcontext()

    class Graph:  # a replay as an eager step (gradients reset, as a captured backward overwrites them)
        def __init__(self, side, extra_steps):
            self.side, self.extra_steps = side, extra_steps

        def replay(self):
            for _ in range(1 + self.extra_steps):
                self.side()

    def captured(side, warmup_steps, stream):
        for _ in range(warmup_steps):
            side()
        return dp._Replay(Graph(side, EXTRA_STEPS), side)

    dp._captured = captured
    job = dp.Job(Shape(d=64, blocks=1, tokens=128, steps=0), world, False, out_dir, "time",
                 variants=(dp.GATED, dp.DDP), timing_rounds=2, timing_steps=2, warmup_steps=1)
    object.__setattr__(job, "graphs", True)  # Job refuses graphs on the CPU; the emulation stands in for them
    me = dp._Rank(rank, world, "cpu", mesh=mesh, amax_group=dist.new_group())
    timed = dp._time(job, me)
    result = {"sides": sorted(timed["times_ms"]), "graph_check": timed["graph_check"],
              "errors": {name: error.strip().splitlines()[-1] for name, error in timed["errors"].items()}}
"""


@pytest.mark.slow  # 2 ranks
def test_captured_sides_that_replay_the_eager_step_are_timed_and_checked_again_after_the_timing(tmp_path):
    """Job.graphs' orchestration on 2 gloo ranks, with each replay an eager step standing in for the graph:
    every side is built, warmed up, checked against an eager twin (bit for bit), timed, and checked again
    after the timing against a twin of as many steps (warm-up, check and timed replays): 0 everywhere."""
    results = _ranks(tmp_path, "\n    EXTRA_STEPS = 0" + _EMULATED_CAPTURE)
    sides = sorted(["one_gpu", label(GATED), label(DDP)])
    for result in results:
        assert result == {"sides": sides, "graph_check": dict.fromkeys(sides, 0.0), "errors": {}}


@pytest.mark.slow  # 2 ranks
def test_a_capture_whose_replays_leave_other_weights_than_eager_steps_is_dropped_with_the_difference(tmp_path):
    """A replay that does not do what the eager step does (here: two steps a replay) is caught before the
    timing: every rank drops the side and says by how much its weights ended apart. One GPU's side is what
    the others are timed against, so its failure ends the job."""
    with pytest.raises(DistributedError, match=r"one GPU's step.*failed(?s:.*)replays leave the weights"):
        _ranks(tmp_path, "\n    EXTRA_STEPS = 1" + _EMULATED_CAPTURE)


@pytest.mark.slow  # every timed variant built and stepped on 2 ranks
def test_every_timing_variant_runs_and_is_timed_against_one_gpus_step(tmp_path):
    shape = Shape(d=64, blocks=2, tokens=256, steps=0)
    job = Job(shape, 2, False, str(tmp_path), "time", variants=EVERY_VARIANT, timing_rounds=2, timing_steps=1,
              warmup_steps=1)
    results = launch(job, timeout_s=300)
    assert [r["errors"] for r in results] == [{}, {}]
    for variant in EVERY_VARIANT:
        result = scaling(results, variant)
        assert result.synced_ms > 0 and result.comm_ms > 0 and result.tokens_per_rank == 128


@pytest.mark.slow  # the benchmark's own CPU check: 2 gloo ranks, every variant once, about a minute
def test_the_scaling_benchmarks_cpu_check_times_every_variant_and_marks_the_gated_one(tmp_path):
    """benchmarks/fsdp2_scaling.py is the first command of a two-GPU session: its --cpu check must run
    as documented (it once ran past its own 140 s timeout on a 2-core machine with the GPU's 7 x 10 steps)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "scaling.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "fsdp2_scaling.py"), str(out), "--cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["rounds"], result["steps_per_round"]) == (1, 1)
    variants = result["variants"]
    # DDP, 8 FSDP2, 2 per linear, 2 the whole model one unit, 4 prefetching
    assert {label(DDP), label(GATED)} <= set(variants) and len(variants) == 17
    assert all(row["efficiency"] > 0 and row["host_ms"] > 0 for row in variants.values()), variants
    assert [name for name, row in variants.items() if row["gated"]] == [label(GATED)]
    assert all(name in done.stdout for name in variants)


def test_the_scaling_benchmark_exits_non_zero_when_its_timing_job_fails(tmp_path):
    """A timing job that does not finish (here: one second for ranks that take longer to start) is a failed
    command, not an empty table: the exit status says so and the JSON keeps the error."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "scaling.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "fsdp2_scaling.py"), str(out), "--cpu",
                           "--timeout", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "the timing job failed" in done.stdout + done.stderr
    assert "did not finish in 1 s" in json.loads(out.read_text())["error"]


def test_captured_variants_timed_in_jobs_of_their_own_come_back_as_one_table_with_each_failure_in_its_row():
    scaling_benchmark = _scaling_benchmark()
    _merged, table = scaling_benchmark._merged, scaling_benchmark.table
    ran = {"world": 1, "d": 64, "rounds": 1, "steps_per_round": 1, "graphs": True, "one_gpu_graph_check": 0.0,
           "one_gpu_ms_per_rank": [9.0], "one_gpu_host_ms": 0.1, "peak_bytes_per_rank": [0],
           "profiles": [{"one_gpu": {}, label(GATED): {}}],
           "variants": {label(GATED): {"single_ms": 9.0, "synced_ms": 10.0, "efficiency": 0.9, "comm_ms": 0.5,
                                       "hidden_fraction": 0.0, "tokens_per_s": 4e5, "host_ms": 0.1, "gated": True,
                                       "round_efficiency_min": 0.9, "round_efficiency_max": 0.9,
                                       "graph_check": 0.0}}}
    crashed = {"error": "rank 0 of 1 exited with 1:\nRuntimeError: CUDA error: an illegal memory access"}
    merged = _merged([crashed, ran], (DDP, GATED), world=1)
    assert merged["variants"][label(DDP)] == crashed and merged["variants"][label(GATED)]["efficiency"] == 0.9
    assert merged["profiles"] == [{"one_gpu": {}, label(GATED): {}}]
    text = table(merged)
    assert "failed: RuntimeError: CUDA error: an illegal memory access" in text and "graph diff" in text
    assert "error" in _merged([crashed, crashed], (DDP, GATED), world=1)


def test_the_scaling_benchmark_times_each_captured_variant_in_a_job_of_its_own(monkeypatch):
    """A replay that breaks the CUDA context ends its process: with --graphs every variant gets a launch of
    its own (one GPU's step beside it), so one such variant stops only itself."""
    fsdp2_scaling = _scaling_benchmark()
    launched = []

    def launch(job, timeout_s):
        launched.append((job.graphs, [label(v) for v in job.variants]))
        raise DistributedError("rank 0 of 1 exited with 1")

    monkeypatch.setattr(fsdp2_scaling, "launch", launch)
    result = fsdp2_scaling.timing(1, 64, True, 1, 1, 10.0, variants=(DDP, GATED), graphs=True)
    assert launched == [(True, [label(DDP)]), (True, [label(GATED)])]
    assert "exited with 1" in result["error"]


def test_a_profiled_timing_job_writes_each_ranks_trace_of_each_side_and_summarises_it(tmp_path):
    """benchmarks/fsdp2_scaling.py --profile: after the timing, every side's steps under the profiler, on every
    rank (a collective needs all of them). The CPU has no device streams, so the summary says so."""
    shape = Shape(d=64, blocks=1, tokens=128, steps=0)
    job = Job(shape, 2, False, str(tmp_path / "job"), "time", variants=(GATED,), timing_rounds=1, timing_steps=1,
              warmup_steps=1, profile_dir=str(tmp_path / "traces"), profile_steps=1)
    results = launch(job, timeout_s=300)
    for rank, result in enumerate(results):
        profiles = result["profiles"]
        assert set(profiles) == {"one_gpu", label(GATED)}
        for side in profiles.values():
            trace = Path(side["file"])
            assert trace.parent == tmp_path / "traces" and f".rank{rank}." in trace.name
            assert json.loads(trace.read_text())["traceEvents"]
            assert side["streams"] == [] and side["span_us"] == 0.0 and "no device time" in side["error"]
            assert trace.with_suffix(".cprofile.txt").read_text() and side["host_functions"]
