"""Data parallelism on CPU (gloo): `pact eval` under torchrun and `lmms-eval --model pact`
under accelerate launch, two processes each, against one process and a direct computation.

Seven documents over two ranks: lmms-eval splits them 4/3 and pads rank 1 with a copy
of a request, which must be neither answered twice nor counted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from helpers_eval import FAMILY, expected, noise_images, write_task

pytest.importorskip("lmms_eval")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.usefixtures("single_thread")

DOCS = 7
MATCHED = 4  # documents whose target is the model's own answer


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel-task")
    images = noise_images(DOCS)
    answers, visual_in, visual_out = expected(images)
    assert len(set(answers)) > 1  # otherwise a mixed-up order would go unnoticed
    write_task(folder, images, answers[:MATCHED] + ["never-answered"] * (DOCS - MATCHED))
    return folder, visual_in, visual_out


def _environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes, gloo, even on a GPU machine
    env["ACCELERATE_USE_CPU"] = "1"
    return env


def _launch(*command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", *command],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _counts(figures: dict) -> dict:
    """The figures that do not depend on timing."""
    names = ("requests", "visual_tokens_seen", "visual_tokens_kept", "reduction_ratio")
    return {name: figures[name] for name in names}


def test_pact_eval_under_torchrun_equals_one_process(task, tmp_path):
    # One process is the direct computation: each question alone, a fresh handle each.
    folder, visual_in, visual_out = task
    argv = ["eval", "--model", f"tiny:{FAMILY}", "--tasks", "tiny_vqa", "--include-path",
            str(folder), "--device", "cpu", "--max-new-tokens", "3"]  # fmt: skip
    run = _launch("torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "pact", *argv, "--output", str(tmp_path / "two.json"))  # fmt: skip
    two = json.loads((tmp_path / "two.json").read_text(encoding="utf-8"))
    assert two["results"]["tiny_vqa"]["exact_match,none"] == pytest.approx(MATCHED / DOCS)
    assert two["n_samples"]["tiny_vqa"]["effective"] == DOCS
    assert _counts(two["pact"]["overall"]) == {
        "requests": DOCS,
        "visual_tokens_seen": visual_in,
        "visual_tokens_kept": visual_out,
        "reduction_ratio": round(1 - visual_out / visual_in, 4),
    }
    assert two["pact"]["rank_requests"] == [4, 3] and two["processes"] == 2
    assert run.stdout.count("model: tiny:qwen2_vl") == 1  # rank 0 alone prints
    assert run.stdout.count("wrote ") == 1


def test_lmms_eval_under_accelerate_launch_splits_and_reports_once(task, tmp_path):
    # accelerate launch's --cpu starts one process whatever --num_processes says; its
    # multi-process launcher with ACCELERATE_USE_CPU starts two CPU processes.
    folder, visual_in, visual_out = task
    run = _launch(
        "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "lmms_eval", "--model", "pact", "--tasks", "tiny_vqa",
        "--model_args", f"pretrained=tiny:{FAMILY},device=cpu,max_new_tokens=3",
        "--include_path", str(folder), "--output_path", str(tmp_path / "out"),
    )  # fmt: skip
    [written] = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(written.read_text(encoding="utf-8"))
    assert results["results"]["tiny_vqa"]["exact_match,none"] == pytest.approx(MATCHED / DOCS)
    assert results["n-samples"]["tiny_vqa"]["effective"] == DOCS
    assert "PactChatLMM" in results["config"]["model_backend"]  # lmms-eval's chat form
    logged = (run.stdout + run.stderr).count(
        f"pact: visual tokens kept {visual_out}/{visual_in}, "
        f"reduction {1 - visual_out / visual_in:.4f}, requests {DOCS} (per process: 4, 3)"
    )
    assert logged == 1  # summed over the ranks, reported by rank 0 alone


def test_each_rank_takes_its_device_and_its_share_of_the_gpus(monkeypatch):
    from pact.eval.parallel import Ranks, rank_device, rank_placement

    alone, second = Ranks(), Ranks(rank=1, local_rank=1, world_size=2)
    assert rank_device("cpu", second) == "cpu" and rank_device("cuda:1", alone) == "cuda:1"
    assert rank_device("cuda", second) == "cuda:1"
    with pytest.raises(ValueError, match="device 'cuda:0' names one GPU, but 2 processes"):
        rank_device("cuda:0", second)
    assert rank_placement(None, second) == {} and rank_placement("auto", alone) == {
        "device_map": "auto"
    }
    with pytest.raises(ValueError, match="device_map='sequential' places the model for one"):
        rank_placement("sequential", second)
    # A machine with four GPUs and two processes: rank 1 spreads over GPUs 2 and 3.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setattr("torch.cuda.mem_get_info", lambda gpu: (1000 + gpu, 2000))
    placement = rank_placement("auto", second)
    assert placement == {"device_map": "auto", "max_memory": {2: 1002, 3: 1003}}
    assert rank_device("cuda", second, placement) == "cuda:2"
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(ValueError, match="needs at least one GPU each; torch sees 1"):
        rank_placement("auto", second)


def test_ranks_come_from_the_launchers_environment(monkeypatch):
    from pact.eval.parallel import Ranks

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert Ranks.from_env() == Ranks() and Ranks.from_env().main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    ranks = Ranks.from_env()
    assert ranks == Ranks(3, 1, 4) and ranks.parallel and not ranks.main
