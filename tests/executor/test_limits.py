"""The model's limits give clear errors: an odd head_dim, positions beyond model.max_seq_len."""

from __future__ import annotations

import json
import time
from pathlib import Path

import executor_cases as cases
import executor_jobs as jobs
import pytest
import torch

from pypto_serving.core.loader import parse_config
from pypto_serving.executor import distributed
from pypto_serving.executor.batch import DecodeBatch, PrefillBatch, build_step
from pypto_serving.executor.errors import SequenceTooLongError
from pypto_serving.executor.generate import greedy_generate, reference_generate
from pypto_serving.executor.model import Rotary, build_reference_model
from pypto_serving.executor.runner import ReferenceModelRunner

MAX_SEQ_LEN = 12
CPU = torch.device("cpu")


def test_an_odd_head_dim_is_refused_by_the_rotary_embedding():
    with pytest.raises(ValueError, match="rotary embedding needs an even head_dim, got 3"):
        Rotary(3, max_seq_len=8, theta=10000.0)


def test_a_step_reaching_max_seq_len_is_refused_naming_it():
    tables = [[0, 1, 2], [3, 4, 5]]
    last = MAX_SEQ_LEN - 1
    step = build_step(DecodeBatch([1, 2], [3, last], tables), 4, CPU, max_seq_len=MAX_SEQ_LEN)
    assert step.meta.positions.tolist() == [3, last]
    with pytest.raises(SequenceTooLongError, match=f"sequence 1 needs positions up to "
                       f"{MAX_SEQ_LEN}, but model.max_seq_len is {MAX_SEQ_LEN}"):
        build_step(DecodeBatch([1, 2], [3, MAX_SEQ_LEN], tables), 4, CPU,
                   max_seq_len=MAX_SEQ_LEN)
    with pytest.raises(SequenceTooLongError, match="sequence 0 needs positions up to 12"):
        build_step(PrefillBatch([[1, 2, 3]], tables[:1], start_positions=[10]), 4, CPU,
                   max_seq_len=MAX_SEQ_LEN)


@pytest.fixture
def runner(monkeypatch, port):
    """A real one-rank world (gloo, in this process) running a tiny dense model."""
    config = parse_config({
        "model": {"name": "tiny", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                  "num_kv_heads": 2, "intermediate_size": 64, "num_experts": 0,
                  "vocab_size": 50, "max_seq_len": MAX_SEQ_LEN},
        "cluster": {"devices_per_node": 1, "platform": "cpu"},
        "serve": {"kv_block_size": 4},
    }, source="test")
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    ctx = distributed.init_distributed(config)
    try:
        r = ReferenceModelRunner(ctx)
        r.load_weights()
        r.init_kv_cache(num_blocks=8)
        yield r
    finally:
        distributed.destroy_distributed()


@pytest.mark.timeout(60)
def test_generation_up_to_max_seq_len_runs_and_one_more_token_is_refused(runner):
    prompt = [[3, 1, 4, 1, 5]]
    fits = MAX_SEQ_LEN - len(prompt[0]) + 1  # the last new token is never fed back
    got = greedy_generate(runner, prompt, fits)
    want = reference_generate(build_reference_model(runner.ctx.model), prompt, fits)
    assert got.tokens == want.tokens and len(got.tokens[0]) == fits
    message = (f"sequence 0 needs positions up to {MAX_SEQ_LEN}, but model.max_seq_len is "
               f"{MAX_SEQ_LEN} .*shorten the prompt or lower max_new_tokens, or raise "
               "model.max_seq_len")
    with pytest.raises(SequenceTooLongError, match=message):
        greedy_generate(runner, prompt, fits + 1, on_step=lambda *_: pytest.fail("stepped"))
    with pytest.raises(SequenceTooLongError, match=message):
        reference_generate(build_reference_model(runner.ctx.model), prompt, fits + 1)
    with pytest.raises(SequenceTooLongError, match="model.max_seq_len is 12"):
        runner.run_decode(DecodeBatch([7], [MAX_SEQ_LEN], [[0, 1, 2, 3]]))


@pytest.mark.timeout(120)
def test_a_refused_request_under_dp_ep_leaves_no_replica_waiting(tmp_path):
    """Replica 1's request is too long: it runs dummy steps while replica 0 finishes (the MoE
    all2all needs both), then refuses; the job ends at once instead of timing out."""
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    proc = jobs.launch(cases.config(dp=2, moe=True, ep=True),
                       Path(__file__).parent / "refuse_worker.py", [str(out)], tmp_path,
                       timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert time.monotonic() - start < 60  # far below the 300 s communication timeout
    rows = {json.loads(p.read_text())["dp"]: json.loads(p.read_text())
            for p in out.glob("rank*.json")}
    assert rows[0]["tokens"] == rows[0]["ref_tokens"] and len(rows[0]["tokens"][0]) == 4
    assert "model.max_seq_len" in rows[1]["refused"]
