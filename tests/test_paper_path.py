"""benchmarks/paper_path.py at tiny shape on CPU, run as a user runs it (`python -m benchmarks.paper_path`): the
paper recipe's whole path (a Mixtral-shaped Q4_K GGUF written with the `gguf` package, on a managed llama-server
with 16 slots as Roleplayer, Oracle and Judge; a Mistral-shaped Questioner; training), each stage timed and set
beside the dry-run's estimate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_path(binary, tmp_path_factory, model_cache) -> tuple[dict, Path]:
    workdir = tmp_path_factory.mktemp("paper-path")
    out = workdir / "result.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.paper_path", "--shape", "tiny", "--workdir", str(workdir),
                           "--json", str(out)], check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), workdir


def test_every_stage_is_timed_beside_the_dry_run_and_extrapolated(tiny_path):
    result, _ = tiny_path
    stages = result["stages"]
    assert list(stages) == ["data", "simulate", "score", "select", "respond", "train"]
    for name, stage in stages.items():
        assert stage["seconds"] > 0, name
        assert 0 <= stage["fixed_seconds"] <= stage["seconds"], name
        assert 0 < stage["peak_bytes"]["at_once"] <= stage["peak_bytes"]["summed"], name
    for name in ("simulate", "score", "respond", "train"):
        assert stages[name]["estimate_seconds"] > 0, name  # the dry-run measured a rate for every local model
    # 2 pairs x 2 conversations at tiny shape; the paper iteration is 1,500 x 10: the work grows 3,750-fold
    assert result["pairs"] == 4 and result["conversations"] == 8
    assert result["conversations"] <= result["turns"] <= 3 * result["conversations"]
    simulate = stages["simulate"]
    growth = (simulate["paper_seconds"] - simulate["fixed_seconds"]) / (simulate["seconds"] - simulate["fixed_seconds"])
    assert growth == pytest.approx(1500 / 4 * 10 / 2)
    assert result["authors_hours"] > result["paper_hours"] > 0
    assert 0 < result["free_at_training_bytes"] <= result["total_bytes"]


def test_the_random_mixtral_gguf_has_the_shape_and_sane_weights(tiny_path):
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    _, workdir = tiny_path
    reader = GGUFReader(workdir / "mixtral-tiny.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer")}
    assert fields["llama.expert_count"] == 8 and fields["llama.expert_used_count"] == 2
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 32000
    tensors = {t.name: t for t in reader.tensors}
    experts = tensors["blk.0.ffn_up_exps.weight"]
    assert experts.tensor_type == GGMLQuantizationType.Q4_K
    weights = dequantize(experts.data, experts.tensor_type)
    assert weights.shape == (8, 512, 256)
    assert np.isfinite(weights).all()
    assert abs(weights.mean()) < 1e-3 and weights.std() == pytest.approx(0.02, rel=0.05)
